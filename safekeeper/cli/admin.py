"""``init``, ``locations``, ``db upgrade``: setting up and looking around."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safekeeper.archive import Archive
from safekeeper.cli.context import state
from safekeeper.cli.output import console, emit_json, table
from safekeeper.config import DEFAULT_DATA_DIR, load_config, write_default
from safekeeper.db.engine import SESSIONS, current_revision
from safekeeper.services.copies import identity, inventory
from safekeeper.services.deletion.gc import default_actor
from safekeeper.units import format_size

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def init(
    directory: Annotated[Path, typer.Argument(help="Data directory to create.")] = DEFAULT_DATA_DIR,
) -> None:
    """Create DIRECTORY (default ./safekeeper-data) with a default safekeeper.toml and an
    empty SQLite database (safekeeper.db).

    The configuration has one site, `local`, and four folder locations inside DIRECTORY:
    `inbox` (source: puts land here), `archive` (archive: replicate copies here),
    `cache` (extracted packages) and `scratch` (processing: staging jobs); policy: one
    verified archive copy before an inbox copy may go, garbage after 7 days. Every key is
    described in docs/configuration.md. An existing safekeeper.toml is never overwritten.
    """
    path = write_default(directory)
    config = load_config(path)
    with Archive(config) as archive:
        for name in config.locations:
            archive.store(name)  # creates each store's root and identity marker
    console.print(f"wrote {path}")
    console.print(f"locations: {', '.join(config.locations)}; database: {config.database_url}")


locations_app = typer.Typer(
    help="Each location with kind, site, store, object count and bytes; `move` confirms a "
    "changed store or kind.",
    invoke_without_command=True,
)


@locations_app.callback()
def locations(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Each location with kind, site, store, object count and bytes."""
    if ctx.invoked_subcommand is not None:
        return
    report = inventory.location_report(state(ctx).archive())
    if as_json:
        emit_json(report)
        return
    rows = [
        (
            r.name + ("" if r.configured else " (not configured)"),
            r.kind,
            r.site,
            r.store,
            r.objects,
            format_size(r.bytes),
        )
        for r in report
    ]
    table(None, ["location", "kind", "site", "store", "objects", "bytes"], rows)


db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply pending migrations of the catalog and the sessions schema (opening an
    archive migrates the catalog too; sessions are migrated on first use)."""
    archive = state(ctx).archive()
    sessions = archive.sessions_db
    console.print(
        f"catalog {archive.db.safe_url}: at revision {current_revision(archive.db.engine)}"
    )
    console.print(
        f"sessions {sessions.safe_url}: at revision {current_revision(sessions.engine, SESSIONS)}"
    )


@locations_app.command("move")
def locations_move(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The location.")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store", metavar="URL", help="The new store URL, as safekeeper.toml gives it."
        ),
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="The new kind, as safekeeper.toml gives it.")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Who to record in the audit log.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Confirm that a location's store (or kind) changed in safekeeper.toml: the new
    store must carry the location's identity marker, or hold its copies; audited."""
    archive = state(ctx).archive(moving={name})
    report = identity.move_location(
        archive, name, store_url=store, kind=kind, actor=actor or default_actor()
    )
    if as_json:
        emit_json(report)
        return
    console.print(
        f"moved {report.location}: store {report.old_store} -> {report.new_store}, kind "
        f"{report.old_kind} -> {report.new_kind} ({report.how}, store {report.store_uuid})"
    )

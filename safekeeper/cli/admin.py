"""``init``, ``locations``, ``db upgrade``: setting up and looking around."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import console, emit_json, table
from safekeeper.config import DEFAULT_DATA_DIR, load_config, write_default
from safekeeper.db.engine import SESSIONS, Database, current_revision
from safekeeper.services import inventory
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
    Database(config.database_url).close()
    console.print(f"wrote {path}")
    console.print(f"locations: {', '.join(config.locations)}; database: {config.database_url}")


def locations(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Each location with kind, site, store, object count and bytes."""
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

"""``pkg put|ls|show``: validated zip packages (SCORM 1.2, SCORM 2004, HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import console, emit_json, table, when
from safekeeper.errors import BadInput, PackageRejected
from safekeeper.ids import RefSpec
from safekeeper.services.packaging import packages

packages_app = typer.Typer(help="Zip packages: validated, described, served.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _package_ref(value: str) -> RefSpec:
    """Typer parser: ``NAMESPACE:KEY[:LABEL]``, label default ``draft``; bad → exit 2."""
    try:
        return packages.package_ref(value)
    except BadInput as exc:
        raise typer.BadParameter(str(exc)) from exc


@packages_app.command("put")
def put_command(
    ctx: typer.Context,
    ref: Annotated[
        RefSpec,
        typer.Argument(
            metavar="NAMESPACE:KEY[:LABEL]",
            parser=_package_ref,
            help="Reference to set (label default: draft).",
        ),
    ],
    file: Annotated[Path, typer.Argument(help="The .zip package.", dir_okay=False)],
    as_json: JsonFlag = False,
) -> None:
    """Validate a zip package and store it under a reference; nothing is stored if it is
    rejected (the error names the check and the member)."""
    try:
        outcome = packages.put_package(state(ctx).archive(), file, ref)
    except PackageRejected as exc:
        # The code is the stable part scripts match on; say it on the one error line.
        raise PackageRejected(exc.code, f"package rejected [{exc.code}] {exc}", exc.member) from exc
    if as_json:
        emit_json(outcome)
        return
    verb = "stored" if outcome.stored else "exists"
    console.print(f"{verb} {outcome.sha256} {outcome.kind} {outcome.entry}")
    console.print(
        f"{outcome.ref}: {outcome.member_count} files, {outcome.extracted_size} bytes extracted"
        + (f", {outcome.title!r}" if outcome.title else "")
    )


@packages_app.command("ls")
def ls_command(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Argument(help="Only this namespace.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List references that point at packages."""
    found = packages.list_packages(state(ctx).archive(), namespace)
    if as_json:
        emit_json(found)
        return
    table(
        None,
        ["reference", "blob", "kind", "entry", "size", "updated"],
        [(p.ref, p.sha256, p.kind, p.entry, p.size, when(p.updated_at)) for p in found],
    )


@packages_app.command("show")
def show_command(
    ctx: typer.Context,
    package: Annotated[
        str,
        typer.Argument(help="Blob id (or unique prefix) or NAMESPACE:KEY[:LABEL] (default draft)."),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Show what validation learned about a package, and its references."""
    view = packages.package_info(state(ctx).archive(), package)
    if as_json:
        emit_json(view)
        return
    console.print(f"package {view.sha256}  {view.size} bytes  created {when(view.created_at)}")
    console.print(f"kind {view.kind}  entry {view.entry}")
    console.print(f"{view.member_count} files, {view.extracted_size} bytes extracted")
    if view.title:
        console.print(f"title {view.title}")
    for reference in view.references:
        console.print(f"ref {reference}")

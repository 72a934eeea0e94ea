"""``export`` and ``import``: a namespace as a bundle file, and back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import byte_progress, console, emit_json
from safekeeper.services import bundles
from safekeeper.units import format_size

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
STDIO = Path("-")


def export_command(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Argument(help="The namespace to export.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Bundle file to write: NAME.tar, or NAME.tar.zst for zstd; - for stdout.",
        ),
    ],
    zstd: Annotated[
        bool | None,
        typer.Option("--zstd/--no-zstd", help="Compress (default: when the name ends in .zst)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a namespace's references, package metadata and blobs to a bundle file."""
    archive = state(ctx).archive()
    to_stdout = output == STDIO
    with byte_progress(enabled=not as_json) as progress:
        task = progress.add_task("exporting", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        target = sys.stdout.buffer if to_stdout else output
        outcome = bundles.export_namespace(archive, namespace, target, report, compress=zstd)
    if to_stdout:
        return  # stdout carries the bundle
    if as_json:
        emit_json(outcome)
        return
    console.print(
        f"exported {namespace} to {output}: {outcome.references} references, "
        f"{outcome.blobs} blobs ({format_size(outcome.bytes)}), {outcome.packages} packages"
    )


def import_command(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle file (.tar or .tar.zst); - for stdin.")],
    into: Annotated[
        str | None,
        typer.Option("--into", help="Namespace to import into (default: the exported one)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Import a bundle: every blob checked, all references set in one transaction."""
    archive = state(ctx).archive()
    with byte_progress(enabled=not as_json) as progress:
        task = progress.add_task("importing", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        source = sys.stdin.buffer if bundle == STDIO else bundle
        outcome = bundles.import_bundle(archive, source, into, report)
    if as_json:
        emit_json(outcome)
        return
    console.print(
        f"imported into {outcome.namespace}: {outcome.blobs_stored} blobs stored, "
        f"{outcome.blobs_skipped} already held ({format_size(outcome.bytes)}); "
        f"references: {outcome.references_created} created, "
        f"{outcome.references_replaced} replaced, {outcome.references_unchanged} unchanged; "
        f"{outcome.packages_created} packages"
    )

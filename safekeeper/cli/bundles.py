"""``export`` and ``import``: a namespace as a bundle file, and back."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import byte_progress, console, emit_json, plural
from safekeeper.errors import BadInput
from safekeeper.services.packaging import bundles
from safekeeper.units import format_size

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
STDIO = Path("-")


@contextmanager
def _byte_report(label: str, enabled: bool) -> Iterator[bundles.Progress]:
    """A progress bar over the bundle's blob bytes, and the callback that moves it."""
    with byte_progress(enabled=enabled) as progress:
        task = progress.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield report


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
    if not to_stdout and output.is_dir():
        raise BadInput(f"{output}: is a directory; give a file name (-o {output}/NAME.tar)")
    in_place = not to_stdout and output.exists() and not output.is_file()
    with _byte_report("exporting", enabled=not as_json) as report:
        if in_place:  # a device or a pipe: written into, never renamed over
            compress = output.name.endswith(".zst") if zstd is None else zstd
            try:
                with output.open("wb") as sink:
                    outcome = bundles.export_namespace(
                        archive, namespace, sink, report, compress=compress
                    )
            except OSError as exc:
                raise BadInput(f"{output}: cannot write the bundle: {exc.strerror}") from exc
        else:
            target = sys.stdout.buffer if to_stdout else output
            outcome = bundles.export_namespace(archive, namespace, target, report, compress=zstd)
    if to_stdout:
        return  # stdout carries the bundle
    if as_json:
        emit_json(outcome)
        return
    console.print(
        f"exported {namespace} to {output}: {plural(outcome.references, 'reference')}, "
        f"{plural(outcome.blobs, 'blob')} ({format_size(outcome.bytes)}), "
        f"{plural(outcome.packages, 'package')}"
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
    """Import a bundle: every blob checked, every package validated, all references set
    in one transaction."""
    archive = state(ctx).archive()
    with _byte_report("importing", enabled=not as_json) as report:
        source = sys.stdin.buffer if bundle == STDIO else bundle
        outcome = bundles.import_bundle(archive, source, into, report)
    if as_json:
        emit_json(outcome)
        return
    console.print(
        f"imported into {outcome.namespace}: {plural(outcome.blobs_stored, 'blob')} stored, "
        f"{outcome.blobs_skipped} already held ({format_size(outcome.bytes)}); "
        f"references: {outcome.references_created} created, "
        f"{outcome.references_replaced} replaced, {outcome.references_unchanged} unchanged; "
        f"{plural(outcome.packages_created, 'package')}"
    )

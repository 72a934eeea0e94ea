"""``put``, ``get``, ``ls``, ``stat``: blobs in and out."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from safekeeper.archive import Archive
from safekeeper.cli.context import parse_ref_param, state
from safekeeper.cli.output import byte_progress, console, emit_json, table, when
from safekeeper.errors import BadInput, Conflict
from safekeeper.ids import RefSpec
from safekeeper.services import ingest, inventory
from safekeeper.units import format_size

BlobArg = Annotated[
    str, typer.Argument(help="Blob id (or a unique prefix) or NAMESPACE:KEY[:LABEL].")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RefOption = Annotated[
    RefSpec | None,
    typer.Option(
        "--ref",
        metavar="NAMESPACE:KEY[:LABEL]",
        parser=parse_ref_param,
        help="Also point this reference at the blob (for a directory: KEY/<path> per file).",
    ),
]


def put(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or directories; - for stdin.")],
    ref: RefOption = None,
    location: Annotated[
        str | None, typer.Option(help="Location to store into (default: the ingest location).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Store files, directories (recursively) or stdin as blobs."""
    archive = state(ctx).archive()
    if Path("-") in paths:
        if len(paths) != 1:
            raise BadInput("- (stdin) cannot be combined with other paths")
        outcomes = [archive.put_stream(sys.stdin.buffer, ref, location)]
    else:
        files = ingest.scan(paths)
        single = len(paths) == 1 and paths[0].is_file()
        total = sum(f.size for f in files)
        outcomes = []
        with byte_progress(enabled=not as_json) as progress:
            task = progress.add_task("storing", total=total)
            for outcome in ingest.put_files(archive, files, ref, location, key_per_file=not single):
                outcomes.append(outcome)
                progress.advance(task, outcome.size)
    if as_json:
        emit_json(outcomes)
        return
    for outcome in outcomes:
        verb = "stored" if outcome.stored else "exists"
        suffix = f"  {outcome.name}" if outcome.name else ""
        console.print(f"{verb} {outcome.sha256} {outcome.size:>12}{suffix}")
    if len(outcomes) > 1:
        new = sum(o.stored for o in outcomes)
        size = format_size(sum(o.size for o in outcomes))
        console.print(
            f"{len(outcomes)} files ({size}): {new} stored, {len(outcomes) - new} already held"
        )


def get(
    ctx: typer.Context,
    blob: Annotated[
        str, typer.Argument(help="Blob id (or unique prefix) or NAMESPACE:KEY[:LABEL].")
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to this file (default: stdout).")
    ] = None,
) -> None:
    """Write a blob's bytes to a file or stdout, checking its hash on the way."""
    archive = state(ctx).archive()
    sha256 = inventory.resolve_blob(archive, blob)
    chunks = inventory.open_blob(archive, sha256)
    digest = hashlib.sha256()
    if output is None:
        sink = sys.stdout.buffer
        for chunk in chunks:
            digest.update(chunk)
            sink.write(chunk)
        sink.flush()
        _check(digest.hexdigest(), sha256)
        return
    # Write beside the target and rename, so a failed get never leaves a partial file.
    directory = output.resolve().parent
    fd, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as sink:
            for chunk in chunks:
                digest.update(chunk)
                sink.write(chunk)
        _check(digest.hexdigest(), sha256)
        os.replace(temp_name, output)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _check(actual: str, expected: str) -> None:
    if actual != expected:
        raise Conflict(f"copy of {expected} read back as {actual}: run `safekeeper verify`")


def print_references(archive: Archive, namespace: str | None, as_json: bool) -> None:
    """References (of one namespace, or all) as a table or JSON: ``ls`` and ``ref ls``."""
    references = inventory.list_refs(archive, namespace)
    if as_json:
        emit_json(references)
        return
    table(
        None,
        ["reference", "blob", "size", "updated"],
        [(r.spec, r.blob, r.size, when(r.updated_at)) for r in references],
    )


def ls(
    ctx: typer.Context,
    namespace: Annotated[
        str | None, typer.Argument(help="List this namespace's references.")
    ] = None,
    refs: Annotated[bool, typer.Option("--refs", help="List all references.")] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many blobs.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List blobs, or references with --refs or a NAMESPACE."""
    archive = state(ctx).archive()
    if refs or namespace is not None:
        print_references(archive, namespace, as_json)
        return
    blobs = inventory.list_all_blobs(archive, limit)
    if as_json:
        emit_json(blobs)
        return
    table(
        None, ["blob", "size", "created"], [(b.sha256, b.size, when(b.created_at)) for b in blobs]
    )


def stat(
    ctx: typer.Context,
    blob: Annotated[
        str, typer.Argument(help="Blob id (or unique prefix) or NAMESPACE:KEY[:LABEL].")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Show a blob's copies per location (state, size, verified-at) and its references."""
    status = inventory.stat_blob(state(ctx).archive(), blob)
    if as_json:
        emit_json(status)
        return
    console.print(f"blob {status.sha256}  {status.size} bytes  created {when(status.created_at)}")
    table(
        "copies",
        ["location", "kind", "state", "size", "verified", "last access", "retries"],
        [
            (
                c.location,
                c.location_kind,
                c.state,
                c.size,
                when(c.verified_at),
                when(c.last_access),
                c.retries,
            )
            for c in status.copies
        ],
    )
    if status.references:
        table("references", ["reference"], [(r.spec,) for r in status.references])
    elif status.unreferenced_since:
        console.print(f"no references (unreferenced since {when(status.unreferenced_since)})")

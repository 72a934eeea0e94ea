"""``put``, ``get``, ``ls``, ``stat``: blobs in and out."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, BinaryIO

import typer

from safekeeper.archive import Archive
from safekeeper.cli.context import parse_ref_param, state
from safekeeper.cli.output import (
    byte_progress,
    console,
    duration,
    emit_json,
    err_console,
    plural,
    print_lines,
    table,
    when,
)
from safekeeper.errors import BadInput, Conflict, Interrupted
from safekeeper.ids import RefSpec
from safekeeper.services.copies import ingest, inventory, tree
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


#: The namespace a put without --ref references each file in, by its path as given.
PATH_NAMESPACE = "files"
#: ``get`` to stdout checks blobs up to this size before writing their first byte.
STDOUT_VERIFY_LIMIT = 64 * 1024 * 1024


def put(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or directories; - for stdin.")],
    ref: RefOption = None,
    no_ref: Annotated[
        bool,
        typer.Option(
            "--no-ref",
            help="Store without a reference: garbage, deleted after the grace period.",
        ),
    ] = False,
    location: Annotated[
        str | None, typer.Option(help="Location to store into (default: the ingest location).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Store files, directories (recursively) or stdin as blobs, each kept by a reference.

    Without --ref, each file is referenced as files:<its path as given> (a directory:
    one reference per file, e.g. files:docs/a.txt), so it is kept until that reference
    is removed (`safekeeper ref rm`). Stdin (-) needs --ref or --no-ref.
    Ctrl-C stops after the files being copied; what was recorded stays, run it again
    to finish.
    """
    if ref is not None and no_ref:
        raise typer.BadParameter("give --ref or --no-ref, not both")
    archive = state(ctx).archive()
    if Path("-") in paths:
        if len(paths) != 1:
            raise typer.BadParameter("- (stdin) cannot be combined with other paths")
        if ref is None and not no_ref:
            raise typer.BadParameter(
                "put - needs --ref NAMESPACE:KEY[:LABEL] to keep what it reads "
                "(or --no-ref: garbage after the grace period)"
            )
        outcomes = [archive.put_stream(sys.stdin.buffer, ref, location)]
    else:
        stored = _put_files(archive, paths, ref, no_ref, location, as_json)
        if stored is None:
            return
        outcomes = stored
    if as_json:
        emit_json(outcomes)
        return
    lines = []
    for outcome in outcomes:
        verb = "stored" if outcome.stored else "exists"
        suffix = f"  {outcome.name}" if outcome.name else ""
        kept = f"  → {outcome.ref}" if outcome.ref else ""
        lines.append(f"{verb} {outcome.sha256} {outcome.size:>12}{suffix}{kept}")
    print_lines(lines)
    if len(outcomes) > 1:
        new = sum(o.stored for o in outcomes)
        size = format_size(sum(o.size for o in outcomes))
        console.print(
            f"{plural(len(outcomes), 'file')} ({size}): {new} stored, "
            f"{len(outcomes) - new} already held"
        )
    if no_ref:
        err_console.print(
            "note: no reference: garbage after the grace period "
            f"({duration(archive.config.policy.grace_period)})"
        )


def _put_files(
    archive: Archive,
    paths: list[Path],
    ref: RefSpec | None,
    no_ref: bool,
    location: str | None,
    as_json: bool,
) -> list[ingest.PutOutcome] | None:
    """The files of ``paths``, stored; None (and a note) when there is nothing to put.
    A first Ctrl-C stops cleanly (``put_files``' ``cancel``), a second at once."""
    files = tree.scan(paths)
    if not files:
        names = ", ".join(tree.display_path(p) for p in paths)
        err_console.print(f"nothing to put: no regular files in {names}")
        return None
    single = len(paths) == 1 and paths[0].is_file()
    total = sum(f.size for f in files)
    outcomes: list[ingest.PutOutcome] = []
    cancel = threading.Event()
    with _first_interrupt_sets(cancel), byte_progress(enabled=not as_json) as progress:
        task = progress.add_task("storing", total=total)
        stream = ingest.put_files(
            archive,
            files,
            ref,
            location,
            key_per_file=not single,
            path_namespace=None if no_ref else PATH_NAMESPACE,
            cancel=cancel,
        )
        try:
            for outcome in stream:
                outcomes.append(outcome)
                progress.advance(task, outcome.size)
        except (Interrupted, KeyboardInterrupt) as exc:
            raise Interrupted(
                f"interrupted: {len(outcomes):,} of {len(files):,} stored; run it again to finish"
            ) from exc
    return outcomes


@contextmanager
def _first_interrupt_sets(event: threading.Event) -> Iterator[None]:
    """Within: the first SIGINT sets ``event`` (the work stops at a clean point), a
    second one raises KeyboardInterrupt as usual."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals go to the main thread only (in-process test runners)
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def get(
    ctx: typer.Context,
    blob: Annotated[
        str, typer.Argument(help="Blob id (or unique prefix) or NAMESPACE:KEY[:LABEL].")
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to this file (default: stdout).")
    ] = None,
) -> None:
    """Write a blob's bytes to a file or stdout, checking its hash on the way.

    A file is written beside the target and renamed only when the hash matched: never a
    partial or wrong file. To stdout, a blob up to 64 MiB is checked before its first
    byte is written; a larger one is streamed, and a mismatch ends with an error saying
    the output is not the blob (exit 1).
    """
    archive = state(ctx).archive()
    sha256 = inventory.resolve_blob(archive, blob)
    if output is None:
        _get_to_stdout(inventory.open_blob(archive, sha256), sha256)
        return
    target = output.resolve()
    if target.is_dir():
        raise BadInput(f"{output}: is a directory; give a file name (-o {output}/NAME)")
    if not target.parent.is_dir():
        raise BadInput(f"{output}: no such directory: {target.parent}")
    try:
        if target.exists() and not target.is_file():
            # A device or a pipe (/dev/null, a FIFO): written in place, never replaced.
            with target.open("wb") as sink:
                _copy_checked(inventory.open_blob(archive, sha256), sink, sha256, str(output))
            return
        _get_to_file(inventory.open_blob(archive, sha256), target, sha256)
    except OSError as exc:
        raise BadInput(f"{output}: cannot write: {exc.strerror or exc}") from exc


def _get_to_file(chunks: Iterator[bytes], target: Path, sha256: str) -> None:
    """Write beside the target and rename, so a failed get never leaves a partial file."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
                sink.write(chunk)
        _check(digest.hexdigest(), sha256)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _get_to_stdout(chunks: Iterator[bytes], sha256: str) -> None:
    """Spool up to STDOUT_VERIFY_LIMIT and check before writing; past it, stream and
    say plainly if what was written is not the blob."""
    spooled: list[bytes] = []
    size = 0
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        spooled.append(chunk)
        size += len(chunk)
        if size > STDOUT_VERIFY_LIMIT:
            break
    else:
        _check(digest.hexdigest(), sha256)
        _write_stdout(spooled)
        return
    _write_stdout(spooled)
    for chunk in chunks:
        digest.update(chunk)
        _write_stdout([chunk])
    if digest.hexdigest() != sha256:
        raise Conflict(
            f"the bytes written to stdout are NOT blob {sha256} (a copy read back as "
            f"{digest.hexdigest()}): discard the output; run `safekeeper verify`"
        )


def _write_stdout(chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise BadInput(f"cannot write to stdout: {exc.strerror or exc}") from exc


def _copy_checked(chunks: Iterator[bytes], sink: BinaryIO, sha256: str, name: str) -> None:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        sink.write(chunk)
    if digest.hexdigest() != sha256:
        raise Conflict(
            f"the bytes written to {name} are NOT blob {sha256}: discard them; "
            "run `safekeeper verify`"
        )


def _check(actual: str, expected: str) -> None:
    if actual != expected:
        raise Conflict(f"copy of {expected} read back as {actual}: run `safekeeper verify`")


def print_references(archive: Archive, namespace: str | None, as_json: bool) -> None:
    """References (of one namespace, or all) as a table or JSON: ``ls`` and ``ref ls``.
    A namespace that does not exist is an error, not an empty list."""
    if namespace is not None:
        inventory.require_namespace(archive, namespace)
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
    """List blobs (with why each is kept, or when it goes), or references with --refs or
    a NAMESPACE."""
    archive = state(ctx).archive()
    if refs or namespace is not None:
        print_references(archive, namespace, as_json)
        return
    blobs = inventory.list_all_blobs(archive, limit)
    if as_json:
        emit_json(blobs)
        return
    table(
        None,
        ["blob", "size", "created", "kept"],
        [(b.sha256, b.size, when(b.created_at), b.kept) for b in blobs],
    )


def stat(
    ctx: typer.Context,
    blob: Annotated[
        str, typer.Argument(help="Blob id (or unique prefix) or NAMESPACE:KEY[:LABEL].")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Show a blob's copies per location (state, size, verified-at), its references, and
    why it is kept (referenced, held) or when it goes (garbage after the grace period)."""
    status = inventory.stat_blob(state(ctx).archive(), blob)
    if as_json:
        emit_json(status)
        return
    console.print(f"blob {status.sha256}  {status.size} bytes  created {when(status.created_at)}")
    console.print(f"kept: {status.keeping.kept}")
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

"""Bundles: a namespace's references, package metadata and blobs in one tar stream.

The format is documented in ``docs/bundle-format.md`` (``bundle_format`` reads and
writes it). Both directions stream: no blob is ever held in memory whole.

Export reads each blob from a present copy, checks its hash on the way out, and writes
``<out>.partial``, renamed when complete, so a failed export leaves no bundle.

Import checks every blob's size and hash against the manifest while staging it into
the ingest location's store. Only when the whole bundle has checked out does one write
transaction publish the staged objects, record blobs, copies and package rows, and set
the references; a failure before that discards everything staged, so a tampered or
truncated bundle imports nothing. Blobs some location already holds are read and
checked but not stored again. References are set like ``ref set``: new ones are added,
different ones replaced (refused in a namespace on hold), and none are removed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard
from sqlalchemy import select

from safekeeper.db.models import Blob, Copy, CopyState, Hold, Location, Namespace, Package
from safekeeper.db.refs import list_references, set_references
from safekeeper.errors import BadInput, Conflict, NotFound, PolicyDenied
from safekeeper.ids import check_name
from safekeeper.services.bundle_format import (
    MANIFEST_NAME,
    READ_SIZE,
    BundleReader,
    Manifest,
    ManifestBlob,
    ManifestPackage,
    ManifestReference,
    MemberBody,
    TarWriter,
    blob_member,
    check_end,
    expect_blob_member,
    open_tar,
    read_manifest,
)
from safekeeper.services.ingest import record_staged
from safekeeper.stores.base import Staged, Store, deferred_sync, sync_store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from safekeeper.archive import Archive

#: Values per IN (...) list: SQLite limits the number of bound parameters.
QUERY_BATCH = 500

#: ``progress(bytes_done, bytes_total)`` over the blobs' bytes.
Progress = Callable[[int, int], None]


# -- export ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOutcome:
    namespace: str
    references: int
    blobs: int
    packages: int
    bytes: int


def export_namespace(
    archive: Archive,
    namespace: str,
    out: Path | BinaryIO,
    progress: Progress | None = None,
    *,
    compress: bool | None = None,
) -> ExportOutcome:
    """Write ``namespace`` as a bundle to ``out`` (a path, or a writable binary stream).

    ``compress`` (zstd) defaults to "``out`` is a path ending in .zst".
    """
    manifest, sources = _plan_export(archive, namespace)
    if compress is None:
        compress = isinstance(out, Path) and out.name.endswith(".zst")
    if not isinstance(out, Path):
        _write_bundle(archive, manifest, sources, out, compress, progress)
    else:
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("wb") as sink:
                _write_bundle(archive, manifest, sources, sink, compress, progress)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(partial, out)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise BadInput(f"{out}: cannot write the bundle: {exc.strerror or exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    total = manifest.total_size
    return ExportOutcome(
        namespace, len(manifest.references), len(manifest.blobs), len(manifest.packages), total
    )


#: sha256 → (location, blob id) of each present copy, the preferred one first.
_Sources = dict[str, list[tuple[str, int]]]


def _plan_export(archive: Archive, namespace: str) -> tuple[Manifest, _Sources]:
    with archive.db.read() as session:
        if session.scalar(select(Namespace.id).where(Namespace.name == namespace)) is None:
            raise NotFound(f"no namespace {namespace!r}")
        references = list_references(session, namespace=namespace)
        blobs: dict[str, ManifestBlob] = {}
        for ref in references:
            blobs.setdefault(ref.blob, ManifestBlob(sha256=ref.blob, size=ref.size))
        packages: list[ManifestPackage] = []
        sources: _Sources = {sha256: [] for sha256 in blobs}
        for batch in _batches(list(blobs)):
            rows = session.execute(
                select(Blob.sha256, Package)
                .join(Package, Package.blob_id == Blob.id)
                .where(Blob.sha256.in_(batch))
            )
            packages.extend(_package_entry(sha256, package) for sha256, package in rows)
            copies = session.execute(
                select(Blob.sha256, Blob.id, Location.name)
                .join(Copy, Copy.blob_id == Blob.id)
                .join(Location, Copy.location_id == Location.id)
                .where(Blob.sha256.in_(batch), Copy.state == CopyState.PRESENT)
            )
            for sha256, blob_id, location in copies:
                if location in archive.config.locations:
                    sources[sha256].append((location, blob_id))
    ingest = archive.config.ingest_location
    for candidates in sources.values():
        candidates.sort(key=lambda c: (c[0] != ingest, c[0]))
    manifest = Manifest(
        created_at=archive.clock(),
        namespace=namespace,
        references=[
            ManifestReference(key=r.key, label=r.label, blob=r.blob, size=r.size)
            for r in references
        ],
        packages=sorted(packages, key=lambda p: p.blob),
        blobs=list(blobs.values()),
    )
    return manifest, sources


def _package_entry(sha256: str, package: Package) -> ManifestPackage:
    return ManifestPackage(
        blob=sha256,
        kind=package.kind,  # type: ignore[arg-type]  # the table's CHECK keeps it one of three
        entry=package.entry,
        title=package.title,
        member_count=package.member_count,
        extracted_size=package.extracted_size,
    )


def _write_bundle(
    archive: Archive,
    manifest: Manifest,
    sources: _Sources,
    sink: BinaryIO,
    compress: bool,
    progress: Progress | None,
) -> None:
    if not compress:
        _write_tar(archive, manifest, sources, sink, progress)
        return
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    with compressor.stream_writer(sink, closefd=False) as compressed:
        _write_tar(archive, manifest, sources, compressed, progress)


def _write_tar(
    archive: Archive,
    manifest: Manifest,
    sources: _Sources,
    sink: Any,
    progress: Progress | None,
) -> None:
    tar = TarWriter(sink, int(manifest.created_at.timestamp()))
    tar.add(MANIFEST_NAME, manifest.to_json())
    done, total = 0, manifest.total_size
    # SHA-256 runs on a helper thread while this one writes (hashlib releases the GIL).
    with ThreadPoolExecutor(1, thread_name_prefix="safekeeper-sha256") as hasher:
        for blob in manifest.blobs:
            tar.begin(blob_member(blob.sha256), blob.size)
            for size in _copy_blob(archive, blob, sources[blob.sha256], tar, hasher):
                done += size
                if progress is not None:
                    progress(done, total)
            tar.end()
    tar.close()


def _copy_blob(
    archive: Archive,
    blob: ManifestBlob,
    candidates: list[tuple[str, int]],
    tar: TarWriter,
    hasher: ThreadPoolExecutor,
) -> Iterator[int]:
    """Stream the blob from its first openable copy into ``tar``; yield sizes written."""
    digest = hashlib.sha256()
    size = 0
    pending: Future[None] | None = None
    for chunk in _open_copy(archive, blob.sha256, candidates):
        size += len(chunk)
        if size > blob.size:
            break
        if pending is not None:
            pending.result()
        pending = hasher.submit(digest.update, chunk)
        tar.write(chunk)
        yield len(chunk)
    if pending is not None:
        pending.result()
    if size != blob.size or digest.hexdigest() != blob.sha256:
        raise Conflict(
            f"the copy of blob {blob.sha256} read back wrong: run `safekeeper verify`; "
            "no bundle written"
        )


def _open_copy(archive: Archive, sha256: str, candidates: list[tuple[str, int]]) -> Iterator[bytes]:
    # No last-access update: reading a whole namespace into a bundle is not the use a
    # cache's eviction order should reward.
    for location, blob_id in candidates:
        try:
            return archive.store(location).open(archive.key_for(location, sha256, blob_id))
        except NotFound:
            continue
    raise NotFound(f"no readable copy of blob {sha256}; no bundle written")


def _batches(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), QUERY_BATCH):
        yield items[start : start + QUERY_BATCH]


# -- import ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOutcome:
    namespace: str
    blobs_stored: int
    blobs_skipped: int
    bytes: int
    references_created: int
    references_replaced: int
    references_unchanged: int
    packages_created: int

    @property
    def references(self) -> int:
        return self.references_created + self.references_replaced + self.references_unchanged


def import_bundle(
    archive: Archive,
    source: Path | BinaryIO,
    into: str | None = None,
    progress: Progress | None = None,
) -> ImportOutcome:
    """Import a bundle (a path, or a readable binary stream) into namespace ``into``
    (default: the namespace it was exported from). All or nothing."""
    if into is not None:
        check_name("namespace", into)
    if not isinstance(source, Path):
        return _import(archive, source, into, progress)
    try:
        stream = source.open("rb")
    except OSError as exc:
        raise BadInput(f"{source}: cannot read: {exc.strerror or exc}") from exc
    with stream:
        return _import(archive, stream, into, progress)


def _import(
    archive: Archive, source: BinaryIO, into: str | None, progress: Progress | None
) -> ImportOutcome:
    reader = BundleReader(source)
    tar = open_tar(reader)
    manifest = read_manifest(tar, reader)
    namespace = into or manifest.namespace
    with archive.db.read() as session:
        _check_references(session, namespace, manifest)  # fail before reading gigabytes
        held = _blobs_present(session, [b.sha256 for b in manifest.blobs])
    location = archive.config.ingest_location
    store = archive.store(location)
    staged: list[Staged] = []
    try:
        with deferred_sync(store):
            done, total = 0, manifest.total_size
            for blob in manifest.blobs:
                reader.what = f"blob {blob.sha256}"
                expect_blob_member(tar, reader, blob)
                if blob.sha256 in held:
                    _check_blob(reader, blob)
                else:
                    staged.append(_stage_blob(store, reader, blob))
                reader.seek(tar.offset)
                done += blob.size
                if progress is not None:
                    progress(done, total)
            check_end(tar, reader)
        sync_store(store)  # the staged bytes are durable before they get names
        with deferred_sync(store):
            return _record(archive, location, namespace, manifest, staged, len(held))
    finally:
        for item in staged:
            item.discard()


def _corrupt(blob: ManifestBlob, sha256: str) -> BadInput:
    return BadInput(
        f"blob {blob.sha256} is corrupt in the bundle: its bytes hash to {sha256}; nothing imported"
    )


def _check_blob(reader: BundleReader, blob: ManifestBlob) -> None:
    """Read a blob already held (the stream must move on anyway) and check its hash."""
    body = MemberBody(reader, blob.size)
    digest = hashlib.sha256()
    while piece := body.read(READ_SIZE):
        digest.update(piece)
    if digest.hexdigest() != blob.sha256:
        raise _corrupt(blob, digest.hexdigest())


def _stage_blob(store: Store, reader: BundleReader, blob: ManifestBlob) -> Staged:
    staged = store.stage(MemberBody(reader, blob.size))  # type: ignore[arg-type]
    if staged.sha256 != blob.sha256 or staged.size != blob.size:
        staged.discard()
        raise _corrupt(blob, staged.sha256)
    return staged


def _check_references(session: Session, namespace: str, manifest: Manifest) -> None:
    """PolicyDenied if the import would replace references in a namespace on hold."""
    existing = {(r.key, r.label): r.blob for r in list_references(session, namespace)}
    replaced = [r for r in manifest.references if existing.get((r.key, r.label), r.blob) != r.blob]
    if not replaced:
        return
    reason = session.scalar(
        select(Hold.reason)
        .join(Namespace, Hold.namespace_id == Namespace.id)
        .where(Namespace.name == namespace, Hold.released_at.is_(None))
    )
    if reason is not None:
        first = replaced[0]
        raise PolicyDenied(
            f"namespace {namespace} is on hold ({reason}): the bundle would replace "
            f"{len(replaced)} of its references ({first.key}:{first.label} first); "
            "nothing imported"
        )


def _blobs_present(session: Session, sha256s: list[str]) -> set[str]:
    """The blobs among ``sha256s`` with a present copy somewhere."""
    present: set[str] = set()
    for batch in _batches(sha256s):
        present.update(
            session.scalars(
                select(Blob.sha256)
                .join(Copy, Copy.blob_id == Blob.id)
                .where(Blob.sha256.in_(batch), Copy.state == CopyState.PRESENT)
                .distinct()
            )
        )
    return present


def _record(
    archive: Archive,
    location: str,
    namespace: str,
    manifest: Manifest,
    staged: list[Staged],
    skipped: int,
) -> ImportOutcome:
    """The one write transaction: objects, blobs, copies, packages, references."""
    store = archive.store(location)
    now = archive.clock()
    with archive.db.write() as session:
        _check_references(session, namespace, manifest)
        blobs: dict[str, Blob] = {}
        for batch in _batches(staged):
            blobs.update(record_staged(archive, session, location, batch, now))
        for batch in _batches([b.sha256 for b in manifest.blobs if b.sha256 not in blobs]):
            blobs.update(
                (b.sha256, b) for b in session.scalars(select(Blob).where(Blob.sha256.in_(batch)))
            )
        packages_created = _record_packages(session, manifest.packages, blobs, now)
        missing = [r.blob for r in manifest.references if r.blob not in blobs]
        if missing:
            raise Conflict(f"blob {missing[0]} vanished during the import; retry it")
        targets = {(r.key, r.label): blobs[r.blob] for r in manifest.references}
        counts = set_references(session, namespace, targets, now)
        sync_store(store)  # the published names are durable before the rows commit
    return ImportOutcome(
        namespace=namespace,
        blobs_stored=len(staged),
        blobs_skipped=skipped,
        bytes=manifest.total_size,
        references_created=counts.created,
        references_replaced=counts.replaced,
        references_unchanged=counts.unchanged,
        packages_created=packages_created,
    )


def _record_packages(
    session: Session, packages: list[ManifestPackage], blobs: dict[str, Blob], now: Any
) -> int:
    """Package rows for the package blobs that have none (metadata is per content, so an
    existing row already says the same)."""
    ids = [blobs[p.blob].id for p in packages]
    known: set[int] = set()
    for batch in _batches(ids):
        known.update(session.scalars(select(Package.blob_id).where(Package.blob_id.in_(batch))))
    fresh = [p for p in packages if blobs[p.blob].id not in known]
    for package in fresh:
        session.add(
            Package(
                blob_id=blobs[package.blob].id,
                kind=package.kind,
                entry=package.entry,
                title=package.title,
                member_count=package.member_count,
                extracted_size=package.extracted_size,
                created_at=now,
            )
        )
    session.flush()
    return len(fresh)

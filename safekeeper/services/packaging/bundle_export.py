"""Bundle export: a namespace's references, package metadata and blobs as one tar
stream (``docs/bundle-format.md``), never holding a blob in memory whole.

Each blob is read from a present copy (the ingest location's first) and its hash is
checked on the way out. A bundle written to a path goes to ``<out>.partial``, fsynced
and renamed when complete, so a failed export leaves no bundle.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard
from sqlalchemy import select

from safekeeper.db.models import Blob, Copy, CopyState, Location, Namespace, Package
from safekeeper.db.refs import list_references
from safekeeper.errors import BadInput, Conflict, NotFound
from safekeeper.services.packaging.bundle_format import (
    MANIFEST_NAME,
    Manifest,
    ManifestBlob,
    ManifestPackage,
    ManifestReference,
    Progress,
    TarWriter,
    batches,
    blob_member,
)

if TYPE_CHECKING:
    from safekeeper.archive import Archive


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
        for batch in batches(list(blobs)):
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
    for sha256, candidates in sources.items():
        if not candidates:
            # Found now, before a stream (stdout, HTTP) gets a bundle it cannot finish.
            raise NotFound(f"no readable copy of blob {sha256}; no bundle written")
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

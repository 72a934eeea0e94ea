"""Bundle import: all of a bundle (``docs/bundle-format.md``), or nothing.

Every blob's size and hash are checked against the manifest while it is staged into
the ingest location's store. Blobs the archive already holds are staged too, like a
put's: the catalog's word that a copy is right is not proof (invariant 11), so the
ingest location's copy is hashed and repaired from the staged bytes if it rotted, and a
blob held only elsewhere gets a copy here — the bundle's bytes are never thrown away
for a copy nobody has looked at. Every blob the manifest calls a package is validated like an
upload (``validate_package``) from a private spooled copy of the very bytes staged,
and must match the manifest's description: the manifest is not trusted to say what is
safe to extract and serve.

Only when the whole bundle has checked out does one write transaction publish the
staged objects, record blobs, copies and package rows, and set the references; a
failure before that discards everything staged, so a tampered, truncated or lying
bundle imports nothing. References are set like ``ref set``: new ones are added,
different ones replaced (refused in a namespace on hold), and none are removed.
"""

from __future__ import annotations

import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sqlalchemy import select

from safekeeper.db.models import Blob, Hold, Namespace, Package
from safekeeper.db.packages import ensure_packages
from safekeeper.db.refs import list_references, set_references
from safekeeper.errors import BadInput, PackageRejected, PolicyDenied
from safekeeper.ids import check_name
from safekeeper.packages.validate import PackageBudgets, PackageInfo, validate_package
from safekeeper.services.copies.ingest import record_staged, reserve_serials
from safekeeper.services.packaging.bundle_format import (
    BundleReader,
    Manifest,
    ManifestBlob,
    ManifestPackage,
    MemberBody,
    Progress,
    batches,
    check_end,
    expect_blob_member,
    open_tar,
    read_manifest,
)
from safekeeper.stores.base import Staged, Store, deferred_sync, shared_hasher, sync_store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from safekeeper.archive import Archive

#: The manifest's package fields that must equal what validation finds in the blob.
PACKAGE_FIELDS = ("kind", "entry", "title", "member_count", "extracted_size")


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
    location = archive.config.ingest_location
    store = archive.store(location, fresh=True)  # a writer: invariant 10, as ingest
    staged: list[Staged] = []
    try:
        # One hashing helper for every blob staged (not a thread started per blob).
        with deferred_sync(store), shared_hasher():
            packages = _read_blobs(archive, store, tar, reader, manifest, staged, progress)
        sync_store(store)  # the staged bytes are durable before they get names
        with deferred_sync(store):
            return _record(archive, location, namespace, manifest, staged, packages)
    finally:
        for item in staged:
            item.discard()


def _read_blobs(
    archive: Archive,
    store: Store,
    tar: tarfile.TarFile,
    reader: BundleReader,
    manifest: Manifest,
    staged: list[Staged],
    progress: Progress | None,
) -> dict[str, PackageInfo]:
    """Check every blob member, staging it into ``staged`` (the caller discards them
    on failure); return the validated packages by sha256."""
    claimed = {package.blob: package for package in manifest.packages}
    budgets = PackageBudgets.from_config(archive.config.packages)
    packages: dict[str, PackageInfo] = {}
    done, total = 0, manifest.total_size
    for blob in manifest.blobs:
        reader.what = f"blob {blob.sha256}"
        expect_blob_member(tar, reader, blob)
        body = MemberBody(reader, blob.size)
        package = claimed.get(blob.sha256)
        if package is None:
            _take_blob(store, body, blob, staged)
        else:
            with _spool_file(archive) as spool:
                _take_blob(store, _Copying(body, spool), blob, staged)
                packages[blob.sha256] = _validate(spool, package, budgets)
        reader.seek(tar.offset)
        done += blob.size
        if progress is not None:
            progress(done, total)
    check_end(tar, reader)
    return packages


def _take_blob(
    store: Store, body: MemberBody | _Copying, blob: ManifestBlob, staged: list[Staged]
) -> None:
    """Stage the blob's bytes, checked against the manifest."""
    item = store.stage(body)  # type: ignore[arg-type]  # read() is all it uses
    if item.sha256 != blob.sha256 or item.size != blob.size:
        item.discard()
        raise _corrupt(blob, item.sha256)
    staged.append(item)


def _corrupt(blob: ManifestBlob, sha256: str) -> BadInput:
    return BadInput(
        f"blob {blob.sha256} is corrupt in the bundle: its bytes hash to {sha256}; nothing imported"
    )


class _Copying:
    """A member's bytes, also written to ``copy`` as they are read."""

    def __init__(self, body: MemberBody, copy: BinaryIO) -> None:
        self._body = body
        self._copy = copy

    def read(self, size: int = -1) -> bytes:
        piece = self._body.read(size)
        self._copy.write(piece)
        return piece


def _spool_file(archive: Archive) -> BinaryIO:
    """An anonymous temp file under ``data_dir/.tmp`` (gone when closed, even after a
    crash): a package blob is validated from there, never held in memory."""
    temp_dir = archive.config.data_dir / ".tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=temp_dir)


def _validate(spool: BinaryIO, claimed: ManifestPackage, budgets: PackageBudgets) -> PackageInfo:
    """Validate the package's bytes; PackageRejected, naming the blob, if they fail a
    check or the manifest describes them otherwise."""
    spool.seek(0)
    try:
        info = validate_package(spool, budgets)
    except PackageRejected as exc:
        message = f"package blob {claimed.blob} is rejected: {exc}; nothing imported"
        raise PackageRejected(exc.code, message, exc.member) from exc
    for field in PACKAGE_FIELDS:
        said, found = getattr(claimed, field), getattr(info, field)
        if said != found:
            raise PackageRejected(
                "manifest_mismatch",
                f"package blob {claimed.blob}: the bundle manifest says its {field} is "
                f"{said!r}, the package itself {found!r}; nothing imported",
                said if field == "entry" else None,
            )
    return info


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


def _record(
    archive: Archive,
    location: str,
    namespace: str,
    manifest: Manifest,
    staged: list[Staged],
    packages: dict[str, PackageInfo],
) -> ImportOutcome:
    """The one write transaction: objects, blobs, copies, packages, references."""
    # Read the marker again right before publishing: reading a large bundle takes long.
    store = archive.store(location, fresh=True)
    serials = reserve_serials(archive, location, len({s.sha256 for s in staged}))
    now = archive.clock()
    stored = 0
    with archive.db.write() as session:
        _check_references(session, namespace, manifest)
        blobs: dict[str, Blob] = {}
        for new in batches(staged):  # every blob of the manifest (read_manifest checks)
            recorded, wrote = record_staged(archive, session, location, new, now, serials)
            blobs.update(recorded)
            stored += sum(wrote)
        packages_created = _record_packages(session, packages, blobs, now)
        targets = {(r.key, r.label): blobs[r.blob] for r in manifest.references}
        counts = set_references(session, namespace, targets, now)
        sync_store(store)  # the published names are durable before the rows commit
    return ImportOutcome(
        namespace=namespace,
        blobs_stored=stored,
        blobs_skipped=len(staged) - stored,
        bytes=manifest.total_size,
        references_created=counts.created,
        references_replaced=counts.replaced,
        references_unchanged=counts.unchanged,
        packages_created=packages_created,
    )


def _record_packages(
    session: Session, packages: dict[str, PackageInfo], blobs: dict[str, Blob], now: datetime
) -> int:
    """Package rows for the package blobs that have none (a row describes the content,
    validated when it was made, so an existing one already says the same)."""
    by_id = {blobs[sha256].id: info for sha256, info in packages.items()}
    known: set[int] = set()
    for batch in batches(list(by_id)):
        known.update(session.scalars(select(Package.blob_id).where(Package.blob_id.in_(batch))))
    fresh = {blob_id: info for blob_id, info in by_id.items() if blob_id not in known}
    # Conflict-tolerant: a concurrent import or upload of the same zip may insert first.
    ensure_packages(session, fresh, now)
    return len(fresh)

"""Packages: validated zip uploads under ``draft``/``published`` references.

``put_package`` spools the upload to a private temp file, validates it there, then
stores exactly those bytes: the blob, its copy, the reference and the ``packages``
row commit in one transaction, or — on any rejection — nothing is written at all,
and a failed re-upload leaves the previous package and its references as they were.

Replacing a ``draft`` makes the old draft's blob unreferenced, so the garbage rule
removes it after the grace period: no sweep code of our own.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from safekeeper.db.models import Blob, Namespace, Package
from safekeeper.db.packages import ensure_packages
from safekeeper.db.refs import list_references, references_query, resolve
from safekeeper.errors import BadInput, NotFound, TooLarge
from safekeeper.ids import RefSpec, check_key, check_name, parse_ref
from safekeeper.packages.validate import PackageBudgets, validate_package
from safekeeper.services.copies import inventory, refs
from safekeeper.services.copies.ingest import put_stream

if TYPE_CHECKING:
    from safekeeper.archive import Archive

DRAFT = "draft"
PUBLISHED = "published"
_SPOOL_CHUNK = 1024 * 1024


def package_ref(text: str) -> RefSpec:
    """``NAMESPACE:KEY[:LABEL]`` with the label defaulting to ``draft``."""
    return parse_ref(text if text.count(":") != 1 else f"{text}:{DRAFT}")


@dataclass(frozen=True)
class PackageOutcome:
    sha256: str
    size: int
    #: True when this upload wrote the zip; False when the archive already held it.
    stored: bool
    ref: RefSpec
    kind: str
    entry: str
    title: str | None
    member_count: int
    extracted_size: int


def put_package(archive: Archive, source: BinaryIO | Path, ref: RefSpec) -> PackageOutcome:
    """Validate the zip in ``source`` and store it under ``ref``; PackageRejected (with
    nothing stored) if it fails any check."""
    with _spool(archive, source) as spooled:
        info = validate_package(spooled, PackageBudgets.from_config(archive.config.packages))
        spooled.seek(0)
        now = archive.clock()

        def record_package(session: Session, blobs: Mapping[str, Blob]) -> None:
            for blob in blobs.values():
                ensure_packages(session, {blob.id: info}, now)

        outcome = put_stream(archive, spooled, ref, name=None, on_record=record_package)
    return PackageOutcome(
        outcome.sha256,
        outcome.size,
        outcome.stored,
        ref,
        info.kind,
        info.entry,
        info.title,
        info.member_count,
        info.extracted_size,
    )


def _spool(archive: Archive, source: BinaryIO | Path) -> BinaryIO:
    """Copy the upload into an anonymous temp file under ``data_dir/.tmp`` (gone when
    closed, even after a crash), refusing more than ``server.max_upload_size`` bytes.

    Validating and storing one private copy means the bytes stored are the bytes
    validated, whatever happens to the source meanwhile."""
    limit = archive.config.server.max_upload_size
    temp_dir = archive.config.data_dir / ".tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    spooled = tempfile.TemporaryFile(dir=temp_dir)  # noqa: SIM115 - returned to the caller
    try:
        if isinstance(source, Path):
            try:
                with source.open("rb") as file:
                    _copy_limited(file, spooled, limit)
            except OSError as exc:
                raise BadInput(f"{source}: cannot read: {exc.strerror}") from exc
        else:
            _copy_limited(source, spooled, limit)
        spooled.seek(0)
    except BaseException:
        spooled.close()
        raise
    return spooled


def _copy_limited(source: IO[bytes], target: IO[bytes], limit: int) -> None:
    copied = 0
    while chunk := source.read(_SPOOL_CHUNK):
        copied += len(chunk)
        if copied > limit:
            raise TooLarge(f"package upload larger than {limit} bytes (server.max_upload_size)")
        target.write(chunk)


@dataclass(frozen=True)
class PublishOutcome:
    namespace: str
    key: str
    sha256: str
    #: The blob ``published`` pointed at before, if it was another one.
    previous: str | None


def publish(archive: Archive, namespace: str, key: str, actor: str | None = None) -> PublishOutcome:
    """Point ``NAMESPACE:KEY:published`` at the blob of ``NAMESPACE:KEY:draft``."""
    draft = RefSpec(check_name("namespace", namespace), check_key(key), DRAFT)
    now = archive.clock()
    # One transaction: the blob published is the draft as it is at commit time.
    with archive.db.write() as session:
        try:
            blob = resolve(session, draft)
        except NotFound:
            raise NotFound(f"no draft to publish: {draft} does not exist") from None
        change = refs.point(
            session, now, RefSpec(namespace, key, PUBLISHED), blob, actor=actor, action="publish"
        )
    return PublishOutcome(namespace, key, change.sha256, change.previous)


@dataclass(frozen=True)
class PackageView:
    sha256: str
    size: int
    kind: str
    entry: str
    title: str | None
    member_count: int
    extracted_size: int
    created_at: datetime
    references: list[str]


def package_info(archive: Archive, text: str) -> PackageView:
    """A package by blob id (or unique prefix) or by reference (label default ``draft``)."""
    target = package_ref(text) if ":" in text else text
    sha256 = inventory.resolve_blob(archive, str(target))
    with archive.db.read() as session:
        row = session.execute(
            select(Blob, Package)
            .join(Package, Package.blob_id == Blob.id)
            .where(Blob.sha256 == sha256)
        ).first()
        if row is None:
            raise NotFound(f"blob {sha256} is not a package (it was not put with `pkg put`)")
        blob, package = row
        return PackageView(
            blob.sha256,
            blob.size,
            package.kind,
            package.entry,
            package.title,
            package.member_count,
            package.extracted_size,
            package.created_at,
            [str(r.spec) for r in list_references(session, blob_id=blob.id)],
        )


@dataclass(frozen=True)
class PackageRefView:
    ref: str
    sha256: str
    size: int
    kind: str
    entry: str
    title: str | None
    updated_at: datetime


def list_packages(archive: Archive, namespace: str | None = None) -> list[PackageRefView]:
    """Every reference that points at a package, by namespace, key and label."""
    query = references_query(Package.kind, Package.entry, Package.title).join(
        Package, Package.blob_id == Blob.id
    )
    if namespace is not None:
        query = query.where(Namespace.name == check_name("namespace", namespace))
    with archive.db.read() as session:
        return [
            PackageRefView(
                str(RefSpec(row.name, row.key, row.label)),
                row.sha256,
                row.size,
                row.kind,
                row.entry,
                row.title,
                row.updated_at,
            )
            for row in session.execute(query)
        ]

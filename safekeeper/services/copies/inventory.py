"""Read side: what blobs exist, where their copies are, and streaming them back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from sqlalchemy import distinct, func, select, union, update

from safekeeper.db.blobs import blobs_by_prefix, find_blob, list_blobs
from safekeeper.db.copies import CopyView, copies_of_blob, present_totals
from safekeeper.db.models import Blob, Copy, CopyState, Hold, Location, Namespace, Reference, Site
from safekeeper.db.refs import ReferenceView, list_references, resolve
from safekeeper.errors import BadInput, NotFound, PermanentStoreError, StoreIdentityError
from safekeeper.ids import BLOB_ID_LENGTH, is_blob_id, parse_ref

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from safekeeper.archive import Archive
    from safekeeper.stores import Store


def resolve_blob(archive: Archive, text: str) -> str:
    """A blob id, a unique id prefix (≥ 6 hex chars), or ``NAMESPACE:KEY[:LABEL]``."""
    candidate = text.strip().lower()
    if is_blob_id(candidate):
        return candidate
    with archive.db.read() as session:
        if ":" in text:
            return resolve(session, parse_ref(text)).sha256
        if 6 <= len(candidate) < BLOB_ID_LENGTH and all(c in "0123456789abcdef" for c in candidate):
            matches = blobs_by_prefix(session, candidate)
            if not matches:
                raise NotFound(f"no blob starts with {candidate}")
            if len(matches) > 1:
                raise BadInput(f"blob prefix {candidate} is ambiguous; give more characters")
            return matches[0].sha256
    raise BadInput(
        f"{text!r} is neither a blob id (64 hex, or a unique prefix of at least 6) "
        "nor a reference NAMESPACE:KEY[:LABEL]"
    )


@dataclass(frozen=True)
class Keeping:
    """Why a blob is kept, or when it goes: what ``ls`` and ``stat`` show."""

    references: int
    holds: int
    #: When the blob becomes garbage (every copy may go); None while referenced.
    garbage_after: datetime | None
    #: One line for people: "referenced by 2", "held (1 hold)", "garbage after …".
    kept: str


def keeping(
    references: int,
    holds: int,
    unreferenced_since: datetime | None,
    grace_period: timedelta,
    now: datetime,
) -> Keeping:
    """Pure: the keep status of a blob from its counts (the garbage rule of
    ``policy.decide``: unreferenced for the grace period, and not held)."""
    garbage_after = None if unreferenced_since is None else unreferenced_since + grace_period
    parts = []
    if references:
        parts.append(f"referenced by {references}")
    if holds:
        parts.append(f"held ({holds} hold{'s' if holds != 1 else ''})")
    if not parts:
        if garbage_after is None:
            parts.append("unreferenced")  # pragma: no cover - the column says otherwise
        elif garbage_after > now:
            parts.append(f"garbage after {garbage_after:%Y-%m-%d %H:%M:%S} (no reference)")
        else:
            parts.append("garbage: deleted by the next gc (no reference)")
    return Keeping(references, holds, None if references else garbage_after, ", ".join(parts))


def _keeping_of(archive: Archive, session: Session, blobs: Sequence[Blob]) -> list[Keeping]:
    ids = [b.id for b in blobs]
    references: dict[int, int] = {}
    holds: dict[int, int] = {}
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        references.update(
            session.execute(
                select(Reference.blob_id, func.count())
                .where(Reference.blob_id.in_(chunk))
                .group_by(Reference.blob_id)
            ).all()
        )
        by_namespace = (
            select(Reference.blob_id.label("blob_id"), Hold.id.label("hold_id"))
            .join(Hold, Hold.namespace_id == Reference.namespace_id)
            .where(Reference.blob_id.in_(chunk), Hold.released_at.is_(None))
        )
        on_blob = select(Hold.blob_id.label("blob_id"), Hold.id.label("hold_id")).where(
            Hold.blob_id.in_(chunk), Hold.released_at.is_(None)
        )
        active = union(by_namespace, on_blob).subquery()
        holds.update(
            session.execute(
                select(active.c.blob_id, func.count(distinct(active.c.hold_id))).group_by(
                    active.c.blob_id
                )
            ).all()
        )
    grace, now = archive.config.policy.grace_period, archive.clock()
    return [
        keeping(references.get(b.id, 0), holds.get(b.id, 0), b.unreferenced_since, grace, now)
        for b in blobs
    ]


_BATCH = 500


@dataclass(frozen=True)
class BlobStatus:
    sha256: str
    size: int
    created_at: datetime
    unreferenced_since: datetime | None
    copies: list[CopyView]
    references: list[ReferenceView]


@dataclass(frozen=True)
class BlobStat(BlobStatus):
    """``stat``: the status, and why the blob is kept or when it goes."""

    keeping: Keeping


def stat_blob(archive: Archive, text: str) -> BlobStat:
    sha256 = resolve_blob(archive, text)
    with archive.db.read() as session:
        blob = session.scalar(select(Blob).where(Blob.sha256 == sha256))
        if blob is None:
            raise NotFound(f"no blob {sha256}")
        return BlobStat(
            sha256=blob.sha256,
            size=blob.size,
            created_at=blob.created_at,
            unreferenced_since=blob.unreferenced_since,
            copies=copies_of_blob(session, blob.id),
            references=list_references(session, blob_id=blob.id),
            keeping=_keeping_of(archive, session, [blob])[0],
        )


@dataclass(frozen=True)
class BlobSummary:
    sha256: str
    size: int
    created_at: datetime
    references: int
    holds: int
    garbage_after: datetime | None
    kept: str


def list_all_blobs(archive: Archive, limit: int | None = None) -> list[BlobSummary]:
    with archive.db.read() as session:
        blobs = list_blobs(session, limit)
        return [
            BlobSummary(
                b.sha256, b.size, b.created_at, k.references, k.holds, k.garbage_after, k.kept
            )
            for b, k in zip(blobs, _keeping_of(archive, session, blobs), strict=True)
        ]


def list_refs(archive: Archive, namespace: str | None = None) -> list[ReferenceView]:
    with archive.db.read() as session:
        return list_references(session, namespace=namespace)


def require_namespace(archive: Archive, namespace: str) -> None:
    """NotFound when there is no such namespace: for commands where a typo, or a flag's
    value (``ls --json true``), must not silently list nothing."""
    with archive.db.read() as session:
        if session.scalar(select(Namespace.id).where(Namespace.name == namespace)) is None:
            flag_value = namespace in ("true", "false", "1", "0", "yes", "no")
            hint = " (flags take no value: --json, not --json true)" if flag_value else ""
            raise NotFound(f"no namespace {namespace!r}{hint}")


# The description documents GET /api/locations, which answers LocationUsage(LocationStatus).
@dataclass(frozen=True)
class LocationStatus:
    name: str
    kind: str
    site: str
    store: str
    configured: Annotated[
        bool, Field(description="false for a location dropped from the configuration")
    ]
    objects: int
    bytes: int


def location_report(archive: Archive) -> list[LocationStatus]:
    """Every location with the present copies the database records there."""
    with archive.db.read() as session:
        totals = present_totals(session)
        rows = session.execute(
            select(Location, Site.name)
            .join(Site, Location.site_id == Site.id)
            .order_by(Location.name)
        )
        report = []
        for location, site in rows:
            count, size = totals.get(location.id, (0, 0))
            report.append(
                LocationStatus(
                    name=location.name,
                    kind=location.kind,
                    site=site,
                    store=location.store_url,
                    configured=location.name in archive.config.locations,
                    objects=count,
                    bytes=size,
                )
            )
        return report


def open_blob(archive: Archive, text: str) -> Iterator[bytes]:
    """Stream a blob from the first present copy that can be read.

    Prefers the ingest location, then other locations by name. The access time of the
    copy that served is recorded (disk-pressure rules evict least recently used first).
    """
    store, key = readable_copy(archive, resolve_blob(archive, text))
    return store.open(key)


def checked(chunks: Iterator[bytes], sha256: str) -> Iterator[bytes]:
    """``chunks`` of blob ``sha256`` passed on, the last one held back until the whole
    hashed right: a reader gets all of the blob or an error (a stream cut short), never
    the whole of a copy that rotted since it was last verified."""
    digest = hashlib.sha256()
    held: bytes | None = None
    try:
        for chunk in chunks:
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if digest.hexdigest() != sha256:
        raise PermanentStoreError(
            f"the copy of blob {sha256} that was read hashes to {digest.hexdigest()}: "
            "not sent whole; `safekeeper verify` finds and repairs the copy"
        )
    if held is not None:
        yield held


def read_blob_range(archive: Archive, sha256: str, start: int, length: int) -> bytes:
    """``length`` bytes of a blob from ``start`` (fewer at its end), from a present copy."""
    store, key = readable_copy(archive, sha256)
    return store.read_range(key, start, length)


def readable_copy(archive: Archive, sha256: str) -> tuple[Store, str]:
    """The store and key of the first present copy of ``sha256`` that exists there."""
    with archive.db.read() as session:
        rows = list(
            session.execute(
                select(Blob.id, Copy.id, Location.name)
                .join(Copy, Copy.blob_id == Blob.id)
                .join(Location, Copy.location_id == Location.id)
                .where(Blob.sha256 == sha256, Copy.state == CopyState.PRESENT)
            )
        )
        if not rows and find_blob(session, sha256) is None:
            raise NotFound(f"no blob {sha256}")
    if not rows:
        raise NotFound(f"blob {sha256} has no present copy")
    ingest = archive.config.ingest_location
    rows.sort(key=lambda row: (row[2] != ingest, row[2]))
    last_error: Exception | None = None
    refused: StoreIdentityError | None = None
    for blob_id, copy_id, location in rows:
        if location not in archive.config.locations:
            continue
        key = archive.key_for(location, sha256, blob_id)
        try:
            store = archive.store(location)
            store.stat(key)
        except StoreIdentityError as exc:  # not the recorded store: try the next copy
            last_error = refused = exc
            continue
        except NotFound as exc:
            last_error = exc
            # Not found is evidence only under a fresh identity check: the cached one
            # may be IDENTITY_TTL old, and an unmounted disk shows nothing.
            try:
                archive.store(location, fresh=True)
            except StoreIdentityError as away:
                last_error = refused = away
            continue
        with archive.db.write() as session:
            session.execute(
                update(Copy).where(Copy.id == copy_id).values(last_access=archive.clock())
            )
        return store, key
    if refused is not None:
        # A copy may be whole on a disk that is away: "unavailable" (transient, 503),
        # never "not found" — a client may take that for "gone" and act on it.
        raise StoreIdentityError(f"no readable copy of blob {sha256} now: {refused}")
    raise NotFound(f"no readable copy of blob {sha256}: {last_error}")

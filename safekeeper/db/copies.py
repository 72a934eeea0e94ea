"""Copy rows and the state machine's database side.

Every state change that another process could race is a conditional UPDATE
(``... WHERE state = <expected>``) whose row count says who won.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from safekeeper.db.models import Blob, Copy, CopyState, Location


def live_copy(session: Session, blob_id: int, location_id: int) -> Copy | None:
    """The copy row of a blob at a location that is not ``deleted`` (at most one exists)."""
    return session.scalar(
        select(Copy).where(
            Copy.blob_id == blob_id,
            Copy.location_id == location_id,
            Copy.state != CopyState.DELETED,
        )
    )


def live_states(session: Session, blob_ids: Sequence[int], location_id: int) -> dict[int, str]:
    """Blob id → state of its live copy at the location, for those that have one."""
    rows = session.execute(
        select(Copy.blob_id, Copy.state).where(
            Copy.blob_id.in_(blob_ids),
            Copy.location_id == location_id,
            Copy.state != CopyState.DELETED,
        )
    )
    return {blob_id: state for blob_id, state in rows}


def was_verified_at(session: Session, blob_id: int, location_id: int) -> bool:
    """Whether a copy of the blob at the location (any row, deleted ones included) was
    ever verified there: then the blob's key at that location was its own."""
    found = session.scalar(
        select(Copy.id)
        .where(
            Copy.blob_id == blob_id,
            Copy.location_id == location_id,
            Copy.verified_at.is_not(None),
        )
        .limit(1)
    )
    return found is not None


def record_present_many(
    session: Session,
    blob_ids: Sequence[int],
    location_id: int,
    now: datetime,
    fingerprints: Mapping[int, str | None] | None = None,
) -> None:
    """``record_present`` for many blobs: reuse live rows, insert the rest, in bulk.
    ``fingerprints``: blob id → its new object's fingerprint (reused rows get none:
    gc re-hashes them before relying on them)."""
    fingerprints = fingerprints or {}
    if not blob_ids:
        return
    existing = live_states(session, blob_ids, location_id)
    if existing:
        session.execute(
            update(Copy)
            .where(
                Copy.blob_id.in_(list(existing)),
                Copy.location_id == location_id,
                Copy.state != CopyState.DELETED,
            )
            .values(
                state=CopyState.PRESENT,
                updated_at=now,
                verified_at=now,
                fingerprint=None,
                last_error=None,
            )
            .execution_options(synchronize_session=False)
        )
    fresh = [blob_id for blob_id in blob_ids if blob_id not in existing]
    if fresh:
        session.execute(
            insert(cast(Table, Copy.__table__)),  # Core: no ORM bookkeeping per row
            [
                {
                    "blob_id": blob_id,
                    "location_id": location_id,
                    "state": CopyState.PRESENT,
                    "created_at": now,
                    "updated_at": now,
                    "verified_at": now,
                    "fingerprint": fingerprints.get(blob_id),
                    "retries": 0,
                }
                for blob_id in fresh
            ],
        )


def record_present(
    session: Session,
    blob_id: int,
    location_id: int,
    now: datetime,
    verified: bool = True,
    fingerprint: str | None = None,
) -> Copy:
    """Record that the blob's bytes are fully written and hashed at the location.

    Reuses a live row (a ``pending`` transfer target, or a ``missing`` copy just
    rewritten); inserts one otherwise.
    """
    copy = live_copy(session, blob_id, location_id)
    if copy is None:
        copy = Copy(
            blob_id=blob_id,
            location_id=location_id,
            state=CopyState.PRESENT,
            created_at=now,
            updated_at=now,
            retries=0,
        )
        session.add(copy)
    copy.state = CopyState.PRESENT
    copy.updated_at = now
    copy.last_error = None
    if verified:
        copy.verified_at = now
        copy.fingerprint = fingerprint
    session.flush()
    return copy


def transition(
    session: Session,
    copy_id: int,
    expected: CopyState,
    new: CopyState,
    now: datetime,
    **changes: object,
) -> bool:
    """Move a copy from ``expected`` to ``new``; False if another process moved it first."""
    copies = cast(Table, Copy.__table__)  # Core UPDATE: no ORM bookkeeping on a hot path
    result = session.execute(
        update(copies)
        .where(copies.c.id == copy_id, copies.c.state == expected)
        .values(state=new, updated_at=now, **changes)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def present_fingerprints(
    session: Session, blob_ids: Sequence[int]
) -> dict[tuple[int, str], tuple[int, str | None]]:
    """(blob id, location name) → (copy id, recorded fingerprint) of present copies."""
    rows = session.execute(
        select(Copy.blob_id, Location.name, Copy.id, Copy.fingerprint)
        .join(Location, Copy.location_id == Location.id)
        .where(Copy.blob_id.in_(blob_ids), Copy.state == CopyState.PRESENT)
    )
    return {(blob_id, name): (copy_id, fp) for blob_id, name, copy_id, fp in rows}


def record_rehashed(session: Session, fingerprints: dict[int, str | None], now: datetime) -> None:
    """Copies whose bytes were just hashed right: ``verified_at`` now, and the
    fingerprint their object had (None when it moved while being hashed: that hash is
    not trusted as a verification, and the next check re-hashes)."""
    copies = cast(Table, Copy.__table__)
    known = [{"cid": i, "fp": fp} for i, fp in fingerprints.items() if fp is not None]
    moved = [i for i, fp in fingerprints.items() if fp is None]
    if known:
        session.execute(
            update(copies)
            .where(copies.c.id == bindparam("cid"), copies.c.state == CopyState.PRESENT)
            .values(verified_at=now, fingerprint=bindparam("fp")),
            known,
        )
    if moved:
        session.execute(
            update(copies)
            .where(copies.c.id.in_(moved), copies.c.state == CopyState.PRESENT)
            .values(fingerprint=None)
        )


def set_fingerprint(session: Session, copy_id: int, fingerprint: str | None) -> None:
    """The fingerprint of a copy whose bytes were just hashed right."""
    copies = cast(Table, Copy.__table__)
    session.execute(update(copies).where(copies.c.id == copy_id).values(fingerprint=fingerprint))


@dataclass(frozen=True)
class CopyView:
    """A copy joined with its location, for display."""

    location: str
    location_kind: str
    state: str
    size: int
    created_at: datetime
    verified_at: datetime | None
    last_access: datetime | None
    retries: int
    last_error: str | None


def copies_of_blob(session: Session, blob_id: int, include_deleted: bool = False) -> list[CopyView]:
    query = (
        select(Copy, Location, Blob.size)
        .join(Location, Copy.location_id == Location.id)
        .join(Blob, Copy.blob_id == Blob.id)
        .where(Copy.blob_id == blob_id)
        .order_by(Location.name, Copy.id)
    )
    if not include_deleted:
        query = query.where(Copy.state != CopyState.DELETED)
    return [
        CopyView(
            location=location.name,
            location_kind=location.kind,
            state=copy.state,
            size=size,
            created_at=copy.created_at,
            verified_at=copy.verified_at,
            last_access=copy.last_access,
            retries=copy.retries,
            last_error=copy.last_error,
        )
        for copy, location, size in session.execute(query)
    ]


def present_totals(session: Session) -> dict[int, tuple[int, int]]:
    """Per location id: (present copy count, bytes) as the database records them."""
    rows = session.execute(
        select(Copy.location_id, func.count(), func.coalesce(func.sum(Blob.size), 0))
        .join(Blob, Copy.blob_id == Blob.id)
        .where(Copy.state == CopyState.PRESENT)
        .group_by(Copy.location_id)
    )
    return {location_id: (int(count), int(total)) for location_id, count, total in rows}

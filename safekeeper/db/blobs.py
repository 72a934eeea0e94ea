"""Blob rows: one per distinct content, keyed by SHA-256."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from safekeeper.db.blob_ids import counts_ids_itself, take_blob_ids
from safekeeper.db.clock import sane_now
from safekeeper.db.engine import dialect_insert
from safekeeper.db.models import Blob
from safekeeper.errors import Conflict, NotFound


def get_blob(session: Session, sha256: str) -> Blob:
    blob = session.scalar(select(Blob).where(Blob.sha256 == sha256))
    if blob is None:
        raise NotFound(f"no blob {sha256}")
    return blob


def find_blob(session: Session, sha256: str) -> Blob | None:
    return session.scalar(select(Blob).where(Blob.sha256 == sha256))


def blobs_by_prefix(session: Session, prefix: str, limit: int = 2) -> Sequence[Blob]:
    query = select(Blob).where(Blob.sha256.startswith(prefix)).order_by(Blob.sha256)
    return session.scalars(query.limit(limit)).all()


def ensure_blob(session: Session, sha256: str, size: int, now: datetime) -> Blob:
    """Return the blob row for ``sha256``, inserting it if absent (race-free)."""
    return ensure_blobs(session, {sha256: size}, now)[sha256]


def ensure_blobs(
    session: Session,
    sizes: dict[str, int],
    now: datetime,
    ids: Iterator[int] | None = None,
) -> dict[str, Blob]:
    """``ensure_blob`` for many at once: a few statements, whatever the count.

    New rows get ids that were never handed out before (``db.blob_ids``): on SQLite
    from ``ids`` when given (numbers reserved in an earlier, committed transaction)
    or from the counter, on PostgreSQL from the column's sequence.
    """
    if not sizes:
        return {}
    since = sane_now(session, now)  # a clock stepped back must not age them at birth
    rows = [
        {"sha256": sha256, "size": size, "created_at": now, "unreferenced_since": since}
        for sha256, size in sizes.items()
    ]
    if not counts_ids_itself(session):
        # One writer at a time on SQLite: the rows missing now are the rows inserted.
        known = set(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(list(sizes)))))
        rows = [row for row in rows if row["sha256"] not in known]
        fresh = iter(take_blob_ids(session, len(rows))) if ids is None else ids
        for row in rows:
            number = next(fresh, None)
            if number is None:
                raise Conflict("ran out of reserved blob ids; retry")
            row["id"] = number
    if rows:  # Core: no ORM bookkeeping per row
        blobs = cast(Table, Blob.__table__)
        session.execute(
            dialect_insert(session, blobs).on_conflict_do_nothing(index_elements=["sha256"]), rows
        )
    found = session.scalars(select(Blob).where(Blob.sha256.in_(list(sizes))))
    return {blob.sha256: blob for blob in found}


def list_blobs(session: Session, limit: int | None = None, after: str = "") -> Sequence[Blob]:
    query = select(Blob).where(Blob.sha256 > after).order_by(Blob.sha256)
    if limit is not None:
        query = query.limit(limit)
    return session.scalars(query).all()

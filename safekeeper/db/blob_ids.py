"""Blob serial numbers (``blobs.id``): once handed out, never handed out again.

They are also the keys of the ``interval`` layout, so a number handed out twice would
let a new blob's copy be written — or accepted — at a key holding another blob's
bytes. A number must therefore outlive a rolled-back or killed transaction:

- PostgreSQL: the column's sequence already does (``nextval`` is never rolled back).
- SQLite: the default ``max(rowid) + 1`` hands out a rolled-back number again, and
  even ``AUTOINCREMENT``'s counter rolls back with the transaction. So every new blob
  row takes an explicit id from the ``id_sequences`` row ``blobs``. A put that writes
  objects at interval keys before its commit takes its numbers in a transaction of its
  own, committed first (``take_blob_ids`` in a separate ``db.write()``); other inserts
  take them inside their own transaction (``ensure_blobs``), which is harmless: a
  rollback there hands back numbers under which no object was written.

A database restored from a backup rewinds the counter with everything else; the hash
check on an object already at a key (``services.copies.existing``) is what keeps a reused
number from overwriting or adopting the object another blob left there.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from safekeeper.db.models import Blob, IdSequence
from safekeeper.errors import Conflict

BLOBS = "blobs"


def counts_ids_itself(session: Session) -> bool:
    """True where the database's own sequence never reuses a number (PostgreSQL)."""
    return session.get_bind().dialect.name == "postgresql"


def take_blob_ids(session: Session, count: int) -> list[int]:
    """``count`` fresh blob ids from the counter (SQLite), inside the caller's
    transaction: they are reserved for good once it commits. Always past every
    existing id, so rows inserted by anything else cannot be handed out again."""
    if count <= 0:
        return []
    if counts_ids_itself(session):
        raise Conflict("blob ids come from PostgreSQL's own sequence, not id_sequences")
    past_max = select(func.coalesce(func.max(Blob.id), 0) + 1).scalar_subquery()
    end = session.scalar(
        update(IdSequence)
        .where(IdSequence.name == BLOBS)
        .values(next_value=func.max(IdSequence.next_value, past_max) + count)
        .returning(IdSequence.next_value)
    )
    if end is None:
        raise Conflict("the id_sequences table has no 'blobs' row: run `safekeeper db upgrade`")
    return list(range(end - count, end))

"""References ``(namespace, key, label) → blob`` and the ``unreferenced_since`` clock.

``blobs.unreferenced_since`` is NULL exactly while a blob has a reference; it is set
when the last reference goes. Every function here that adds or drops a reference
keeps that true in the same transaction, so the garbage rule can trust it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, exists, insert, select, update
from sqlalchemy.orm import QueryableAttribute, Session

from safekeeper.db.clock import sane_now
from safekeeper.db.engine import dialect_insert
from safekeeper.db.models import Blob, Copy, CopyState, Hold, Namespace, Reference
from safekeeper.errors import Conflict, NotFound, PolicyDenied
from safekeeper.ids import RefSpec

#: The user on whose behalf references are being set (tenant paths); None: the CLI or
#: an admin tool. Recorded as ``refs.set_by_user_id`` so erasing a user takes what they
#: set, never what a colleague set in their namespace.
_setter: ContextVar[int | None] = ContextVar("reference_setter", default=None)


@contextmanager
def set_by(user_id: int | None) -> Iterator[None]:
    """References created or re-pointed inside the block are recorded as ``user_id``'s."""
    token = _setter.set(user_id)
    try:
        yield
    finally:
        _setter.reset(token)


def ensure_namespace(session: Session, name: str, now: datetime) -> Namespace:
    session.execute(
        dialect_insert(session, Namespace)
        .values(name=name, created_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    namespace = session.scalar(select(Namespace).where(Namespace.name == name))
    if namespace is None:  # pragma: no cover - the insert above guarantees it
        raise NotFound(f"namespace {name!r} vanished")
    return namespace


def _find(session: Session, spec: RefSpec) -> Reference | None:
    return session.scalar(
        select(Reference)
        .join(Namespace, Reference.namespace_id == Namespace.id)
        .where(
            Namespace.name == spec.namespace,
            Reference.key == spec.key,
            Reference.label == spec.label,
        )
    )


def _mark_unreferenced_if_orphaned(session: Session, blob_id: int, now: datetime) -> None:
    """Start the blob's grace period if nothing references it any more — never before
    the database's clock floor: a clock stepped back must not date it in the past."""
    still_used = exists().where(Reference.blob_id == blob_id)
    session.execute(
        update(Blob)
        .where(Blob.id == blob_id, ~still_used)
        .values(unreferenced_since=sane_now(session, now))
        .execution_options(synchronize_session=False)
    )


def pin_present_copies(session: Session, blob_id: int, now: datetime) -> None:
    """Lock the blob's present copies for this transaction, or raise Conflict.

    A conditional UPDATE takes row locks, so a deleter's claim (``present →
    deleting``) either committed before (then no present copy is left to pin, or the
    ones left stay) or waits for this transaction and then re-reads the references we
    added. Either way no reference ends up pointing at a deleted blob (invariant 5).
    """
    pinned = session.execute(
        update(Copy)
        .where(Copy.blob_id == blob_id, Copy.state == CopyState.PRESENT)
        .values(last_access=now)
        .execution_options(synchronize_session=False)
    )
    if not pinned.rowcount:  # type: ignore[attr-defined]
        raise Conflict(
            f"blob {blob_id} has no present copy (being deleted, or lost); put its bytes again"
        )


def _refuse_if_held(session: Session, namespace_id: int, spec: RefSpec) -> None:
    """A namespace on hold is frozen against unlinking: its blobs must not turn into
    garbage behind the hold's back."""
    held = session.scalar(
        select(Hold.reason).where(Hold.namespace_id == namespace_id, Hold.released_at.is_(None))
    )
    if held is not None:
        raise PolicyDenied(
            f"namespace {spec.namespace} is on hold ({held}): its references cannot be "
            "removed or replaced until the hold is released"
        )


def set_reference(session: Session, spec: RefSpec, blob: Blob, now: datetime) -> int | None:
    """Point ``spec`` at ``blob``; return the id of the blob it pointed at before, if other.

    The blob must have a present copy, which stays pinned until the transaction ends.
    """
    pin_present_copies(session, blob.id, now)
    sane_now(session, now)  # keeps the clock floor current (see safekeeper.db.clock)
    reference = _find(session, spec)
    previous: int | None = None
    if reference is None:
        namespace = ensure_namespace(session, spec.namespace, now)
        session.add(
            Reference(
                namespace_id=namespace.id,
                key=spec.key,
                label=spec.label,
                blob_id=blob.id,
                created_at=now,
                updated_at=now,
                set_by_user_id=_setter.get(),
            )
        )
    elif reference.blob_id != blob.id:
        _refuse_if_held(session, reference.namespace_id, spec)
        previous = reference.blob_id
        reference.blob_id = blob.id
        reference.updated_at = now
        reference.set_by_user_id = _setter.get()
    blob.unreferenced_since = None
    session.flush()
    if previous is not None:
        _mark_unreferenced_if_orphaned(session, previous, now)
    return previous


def remove_reference(session: Session, spec: RefSpec, now: datetime) -> int:
    """Drop ``spec``; return the blob id it pointed at. NotFound if there is none."""
    reference = _find(session, spec)
    if reference is None:
        raise NotFound(f"no reference {spec}")
    _refuse_if_held(session, reference.namespace_id, spec)
    blob_id = reference.blob_id
    session.delete(reference)
    session.flush()
    _mark_unreferenced_if_orphaned(session, blob_id, now)
    return blob_id


def resolve(session: Session, spec: RefSpec) -> Blob:
    reference = _find(session, spec)
    if reference is None:
        raise NotFound(f"no reference {spec}")
    return session.get_one(Blob, reference.blob_id)


@dataclass(frozen=True)
class ReferenceView:
    namespace: str
    key: str
    label: str
    blob: str
    size: int
    updated_at: datetime

    @property
    def spec(self) -> RefSpec:
        return RefSpec(self.namespace, self.key, self.label)


def references_query(*extra: QueryableAttribute[Any]) -> Select[Any]:
    """Every reference as (namespace name, key, label, sha256, size, updated_at, *extra),
    in that order of namespace, key and label; join tables that ``extra`` names."""
    return (
        select(
            Namespace.name,
            Reference.key,
            Reference.label,
            Blob.sha256,
            Blob.size,
            Reference.updated_at,
            *extra,
        )
        .join(Namespace, Reference.namespace_id == Namespace.id)
        .join(Blob, Reference.blob_id == Blob.id)
        .order_by(Namespace.name, Reference.key, Reference.label)
    )


def list_references(
    session: Session,
    namespace: str | None = None,
    blob_id: int | None = None,
    *,
    key_prefix: str = "",
    label: str | None = None,
) -> list[ReferenceView]:
    query = references_query()
    if namespace is not None:
        query = query.where(Namespace.name == namespace)
    if blob_id is not None:
        query = query.where(Reference.blob_id == blob_id)
    if key_prefix:
        query = query.where(Reference.key.startswith(key_prefix, autoescape=True))
    if label is not None:
        query = query.where(Reference.label == label)
    views = [ReferenceView(*row) for row in session.execute(query)]
    # SQLite's LIKE ignores ASCII case: keep the exact-prefix matches only.
    return [view for view in views if view.key.startswith(key_prefix)]


def namespace_names(session: Session) -> list[str]:
    return list(session.scalars(select(Namespace.name).order_by(Namespace.name)))


#: Values per IN (...) list in the bulk functions (SQLite limits bound parameters).
_BATCH = 500


@dataclass(frozen=True)
class SetCounts:
    created: int
    replaced: int
    unchanged: int


def set_references(
    session: Session, namespace: str, targets: Mapping[tuple[str, str], Blob], now: datetime
) -> SetCounts:
    """``set_reference`` for many ``(key, label) → blob`` of one namespace, with the same
    guarantees (present copies pinned, holds refuse replacing, ``unreferenced_since``
    kept true) in a handful of statements per few hundred references."""
    blob_ids = sorted({blob.id for blob in targets.values()})
    for start in range(0, len(blob_ids), _BATCH):
        _pin_present_copies_many(session, blob_ids[start : start + _BATCH], now)
    sane_now(session, now)  # keeps the clock floor current (see safekeeper.db.clock)
    space = ensure_namespace(session, namespace, now)
    keys = sorted({key for key, _ in targets})
    existing: dict[tuple[str, str], Reference] = {}
    for start in range(0, len(keys), _BATCH):  # only the keys asked for, not the namespace
        existing.update(
            ((r.key, r.label), r)
            for r in session.scalars(
                select(Reference).where(
                    Reference.namespace_id == space.id,
                    Reference.key.in_(keys[start : start + _BATCH]),
                )
            )
        )
    fresh: list[dict[str, object]] = []
    previous: set[int] = set()
    unchanged = 0
    for (key, label), blob in targets.items():
        reference = existing.get((key, label))
        if reference is None:
            fresh.append(
                {
                    "namespace_id": space.id,
                    "key": key,
                    "label": label,
                    "blob_id": blob.id,
                    "created_at": now,
                    "updated_at": now,
                    "set_by_user_id": _setter.get(),
                }
            )
        elif reference.blob_id == blob.id:
            unchanged += 1
        else:
            _refuse_if_held(session, space.id, RefSpec(namespace, key, label))
            previous.add(reference.blob_id)
            reference.blob_id = blob.id
            reference.updated_at = now
            reference.set_by_user_id = _setter.get()
    if fresh:  # Core: no ORM bookkeeping per row
        session.execute(insert(cast(Table, Reference.__table__)), fresh)
    for start in range(0, len(blob_ids), _BATCH):
        session.execute(
            update(Blob)
            .where(Blob.id.in_(blob_ids[start : start + _BATCH]))
            .values(unreferenced_since=None)
            .execution_options(synchronize_session=False)
        )
    session.flush()
    for blob_id in previous - set(blob_ids):
        _mark_unreferenced_if_orphaned(session, blob_id, now)
    return SetCounts(len(fresh), len(targets) - len(fresh) - unchanged, unchanged)


def _pin_present_copies_many(session: Session, blob_ids: list[int], now: datetime) -> None:
    """``pin_present_copies`` for many blobs: lock them all, then check none lacks one."""
    session.execute(
        update(Copy)
        .where(Copy.blob_id.in_(blob_ids), Copy.state == CopyState.PRESENT)
        .values(last_access=now)
        .execution_options(synchronize_session=False)
    )
    pinned = set(
        session.scalars(
            select(Copy.blob_id).where(Copy.blob_id.in_(blob_ids), Copy.state == CopyState.PRESENT)
        )
    )
    for blob_id in blob_ids:
        if blob_id not in pinned:
            raise Conflict(
                f"blob {blob_id} has no present copy (being deleted, or lost); put its bytes again"
            )

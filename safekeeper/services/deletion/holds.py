"""Holds (legal holds): while one is active, no copy of its blob(s) is deleted.

A hold pins like a reference does (docs/design.md, "Fenced claims"): in the
transaction that adds it, the blobs' present copies are locked and any gc claim on
them that has not reached its fence is taken back; a claim past its fence (the object
may be going at this moment) makes the hold fail with Conflict. So a hold is either
in force before any further deletion, or refused — never accepted and ignored.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db.blobs import get_blob
from safekeeper.db.claims import take_back
from safekeeper.db.models import Blob, Hold, Namespace, Reference
from safekeeper.db.refs import pin_present_copies
from safekeeper.errors import BadInput, NotFound
from safekeeper.ids import check_name, is_blob_id
from safekeeper.services.copies.inventory import resolve_blob

if TYPE_CHECKING:
    from safekeeper.archive import Archive


@dataclass(frozen=True)
class HoldView:
    id: int
    target: str
    kind: str
    reason: str
    created_by: str
    created_at: datetime
    released_at: datetime | None


def _target(archive: Archive, text: str) -> tuple[str, str]:
    """``("blob", sha256)`` or ``("namespace", name)``: a full blob id, else an existing
    namespace of that name, else a unique blob id prefix."""
    candidate = text.strip().lower()
    if is_blob_id(candidate):
        return "blob", candidate
    with archive.db.read() as session:
        if session.scalar(select(Namespace.id).where(Namespace.name == text)) is not None:
            return "namespace", text
    if len(candidate) >= 6 and _hexish(candidate):
        with contextlib.suppress(NotFound):
            return "blob", resolve_blob(archive, text)
    return "namespace", check_name("namespace", text)


def _hexish(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def add_hold(archive: Archive, target: str, reason: str, actor: str) -> HoldView:
    if not reason.strip():
        raise BadInput("a hold needs a --reason")
    kind, value = _target(archive, target)
    with archive.db.write() as session:
        now = archive.clock()
        hold = Hold(reason=reason, created_by=actor, created_at=now)
        if kind == "blob":
            hold.blob_id = get_blob(session, value).id
            take_back(session, [hold.blob_id], now)
            # Like a reference: a hold needs a present copy to keep (Conflict otherwise).
            pin_present_copies(session, hold.blob_id, now)
        else:
            namespace = session.scalar(select(Namespace).where(Namespace.name == value))
            if namespace is None:
                raise NotFound(f"no namespace {value!r} (and no blob with that id prefix)")
            hold.namespace_id = namespace.id
            take_back(
                session,
                select(Reference.blob_id).where(Reference.namespace_id == namespace.id),
                now,
            )
        session.add(hold)
        session.flush()
        return HoldView(hold.id, value, kind, reason, actor, now, None)


def release_holds(archive: Archive, target: str) -> int:
    """Release every active hold on ``target``; returns how many."""
    kind, value = _target(archive, target)
    with archive.db.write() as session:
        query = select(Hold).where(Hold.released_at.is_(None))
        if kind == "blob":
            query = query.join(Blob, Hold.blob_id == Blob.id).where(Blob.sha256 == value)
        else:
            query = query.join(Namespace, Hold.namespace_id == Namespace.id).where(
                Namespace.name == value
            )
        holds = session.scalars(query).all()
        if not holds:
            raise NotFound(f"no active hold on {value}")
        now = archive.clock()
        for hold in holds:
            hold.released_at = now
        return len(holds)


def list_holds(archive: Archive, include_released: bool = False) -> list[HoldView]:
    query = (
        select(Hold, Blob.sha256, Namespace.name)
        .outerjoin(Blob, Hold.blob_id == Blob.id)
        .outerjoin(Namespace, Hold.namespace_id == Namespace.id)
        .order_by(Hold.id)
    )
    if not include_released:
        query = query.where(Hold.released_at.is_(None))
    with archive.db.read() as session:
        return [
            HoldView(
                hold.id,
                sha256 or name,
                "blob" if sha256 else "namespace",
                hold.reason,
                hold.created_by,
                hold.created_at,
                hold.released_at,
            )
            for hold, sha256, name in session.execute(query)
        ]

"""gc claims on copies, fenced by a token (invariants 4 and 12).

A claim is ``present → deleting`` with a fresh random ``claim_token``. Every later step
of the claimant — heartbeat, fence, release, record ``deleted`` — is a conditional
UPDATE on ``claim_token = <its token>``, so it acts only on rows it still owns. Others
move a claim away from its claimant in exactly two ways, each changing the token:

- stale-claim recovery *takes over* a claim whose time lies more than the timeout in
  the past (or in the future: a clock that was ahead), re-checking staleness in the
  UPDATE itself, so a heartbeat that landed first wins;
- a hold or a staging job *takes back* a claim that is not fenced yet (``deleting →
  present``), and refuses with Conflict if the claimant has already passed its fence.

The fence is the last database step before the physical delete: it stamps
``fenced_at`` on the rows the claimant still owns, and only those are deleted.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from safekeeper.db.models import Copy, CopyState, Location
from safekeeper.errors import Conflict

#: Values per IN (...) list (SQLite limits bound parameters).
_CHUNK = 500


def new_token() -> str:
    return secrets.token_hex(16)


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[i : i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]


def _owned(copy_ids: Sequence[int], token: str) -> ColumnElement[bool]:
    return and_(Copy.id.in_(copy_ids), Copy.state == CopyState.DELETING, Copy.claim_token == token)


def claim(session: Session, copy_ids: Sequence[int], token: str, now: datetime) -> list[int]:
    """``present → deleting`` under ``token`` for those still present; the ids won."""
    won: list[int] = []
    for chunk in _chunks(copy_ids):
        won += session.scalars(
            update(Copy)
            .where(Copy.id.in_(chunk), Copy.state == CopyState.PRESENT)
            .values(state=CopyState.DELETING, claim_token=token, fenced_at=None, updated_at=now)
            .returning(Copy.id)
        )
    return won


def heartbeat(session: Session, copy_ids: Sequence[int], token: str, now: datetime) -> set[int]:
    """Refresh the claim's time; returns the ids still owned."""
    owned: set[int] = set()
    for chunk in _chunks(copy_ids):
        owned.update(
            session.scalars(
                update(Copy).where(_owned(chunk, token)).values(updated_at=now).returning(Copy.id)
            )
        )
    return owned


def fence(session: Session, copy_ids: Sequence[int], token: str, now: datetime) -> set[int]:
    """Mark the start of the physical delete on the rows still owned; returns them.
    From here on no hold or job can take these claims back (they get a Conflict)."""
    owned: set[int] = set()
    for chunk in _chunks(copy_ids):
        owned.update(
            session.scalars(
                update(Copy)
                .where(_owned(chunk, token))
                .values(fenced_at=now, updated_at=now)
                .returning(Copy.id)
            )
        )
    return owned


def release(
    session: Session,
    copy_ids: Sequence[int],
    token: str,
    now: datetime,
    *,
    error: str | None = None,
    max_retries: int = 0,
) -> set[int]:
    """``deleting → present`` for the rows still owned (with ``error``: a failed
    attempt counted, ``→ failed`` past ``max_retries``); returns them."""
    values: dict[str, Any] = {
        "state": CopyState.PRESENT,
        "updated_at": now,
        "claim_token": None,
        "fenced_at": None,
    }
    if error is not None:
        values.update(retries=Copy.retries + 1, last_error=error)
    released: set[int] = set()
    for chunk in _chunks(copy_ids):
        released.update(
            session.scalars(
                update(Copy).where(_owned(chunk, token)).values(**values).returning(Copy.id)
            )
        )
    if error is not None and released:
        for chunk in _chunks(sorted(released)):
            session.execute(
                update(Copy)
                .where(
                    Copy.id.in_(chunk),
                    Copy.state == CopyState.PRESENT,
                    Copy.retries >= max_retries,
                )
                .values(state=CopyState.FAILED)
                .execution_options(synchronize_session=False)
            )
    return released


def mark_deleted(session: Session, copy_ids: Sequence[int], token: str, now: datetime) -> set[int]:
    """``deleting → deleted`` for the rows still owned; returns them (the only ones
    that may get an audit row)."""
    done: set[int] = set()
    for chunk in _chunks(copy_ids):
        done.update(
            session.scalars(
                update(Copy)
                .where(_owned(chunk, token))
                .values(state=CopyState.DELETED, updated_at=now)
                .returning(Copy.id)
            )
        )
    return done


def _stale(now: datetime, timeout: timedelta) -> ColumnElement[bool]:
    """A claim older than the timeout — or dated more than the timeout in the future,
    by a clock that was ahead: waiting for real time to catch up could take years."""
    return and_(
        Copy.state == CopyState.DELETING,
        or_(Copy.updated_at < now - timeout, Copy.updated_at > now + timeout),
    )


def stale_claims(
    session: Session, now: datetime, timeout: timedelta, location: str | None = None
) -> list[int]:
    """The stale claims (at one location, when given)."""
    query = select(Copy.id).where(_stale(now, timeout))
    if location is not None:
        query = query.join(Location, Copy.location_id == Location.id).where(
            Location.name == location
        )
    return list(session.scalars(query.order_by(Copy.id)))


def stale_claim_locations(session: Session, now: datetime, timeout: timedelta) -> dict[str, int]:
    """Location name → the lowest copy id among its stale claims, for locations with any."""
    rows = session.execute(
        select(Location.name, func.min(Copy.id))
        .join(Location, Copy.location_id == Location.id)
        .where(_stale(now, timeout))
        .group_by(Location.name)
    )
    return {name: int(copy_id) for name, copy_id in rows}


def take_over(
    session: Session, copy_ids: Sequence[int], token: str, now: datetime, timeout: timedelta
) -> dict[int, bool]:
    """Make stale claims ours: copy id → whether its old claimant had passed its fence.

    Staleness is re-checked by the UPDATE itself, so a claim whose claimant sent a
    heartbeat after we looked is left alone; the others get our token, and their old
    claimant's fence, release and record all match nothing from now on."""
    taken: dict[int, bool] = {}
    for chunk in _chunks(copy_ids):
        rows = session.execute(
            update(Copy)
            .where(Copy.id.in_(chunk), _stale(now, timeout))
            .values(claim_token=token, updated_at=now)
            .returning(Copy.id, Copy.fenced_at)
        )
        taken.update({copy_id: fenced_at is not None for copy_id, fenced_at in rows})
    return taken


def take_back(
    session: Session,
    blob_ids: Select[Any] | Sequence[int],
    now: datetime,
    location_id: int | None = None,
) -> int:
    """For a hold or a staging job on these blobs (at one location, when given): make
    sure no gc deletes a copy once this transaction commits. Returns the claims taken
    back; raises Conflict if a claimant has already passed its fence.

    1. lock the present copies (a conditional UPDATE takes their row locks), so a
       claim on them waits for this transaction and its re-read then sees what we add;
    2. take back claims not fenced yet (``deleting → present``, token cleared): their
       claimant's fence then matches nothing. This statement starts after 1, so it
       sees every claim that committed while 1 waited;
    3. a fenced claim means the object may be going right now: Conflict.
    """
    where: list[ColumnElement[bool]] = [Copy.blob_id.in_(blob_ids)]
    if location_id is not None:
        where.append(Copy.location_id == location_id)
    session.execute(
        update(Copy)
        .where(*where, Copy.state == CopyState.PRESENT)
        .values(state=Copy.state)
        .execution_options(synchronize_session=False)
    )
    taken = session.execute(
        update(Copy)
        .where(*where, Copy.state == CopyState.DELETING, Copy.fenced_at.is_(None))
        .values(state=CopyState.PRESENT, claim_token=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    going = session.scalar(select(Copy.id).where(*where, Copy.state == CopyState.DELETING).limit(1))
    if going is not None:
        raise Conflict(
            "a copy of this blob is being deleted right now (a gc passed its last check "
            "before the hold or job arrived); retry in a moment"
        )
    return int(taken.rowcount)  # type: ignore[attr-defined]

"""The database's clock: time as the database has seen it never goes backwards.

Safety timestamps — a blob's ``unreferenced_since``, a gc claim's time — are written
from the calling process's clock, and the deletion rules later compare them with
another process's clock (or the same one after a correction). A clock that was behind
when such a timestamp was written makes it lie in the past, so the grace period or
the claim timeout has "already" run out. The floor closes that: ``clock_floor`` keeps
the latest time any process used (advanced at most once per ``STEP`` to keep the row
cool), and :func:`sane_now` never returns less than it. Ahead-of-time timestamps are
handled where they are read (a claim dated in the future is stale, see
``safekeeper.db.claims``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from safekeeper.db.engine import dialect_insert
from safekeeper.db.models import ClockFloor

#: How far behind the floor may lag the newest time used: it is written at most once
#: per step, so a clock stepped back is clamped to within this much of the truth.
STEP = timedelta(seconds=60)

_ROW = 1


def floor(session: Session) -> datetime | None:
    """The latest time recorded (up to ``STEP`` behind the latest used), if any."""
    return session.scalar(select(ClockFloor.high_water).where(ClockFloor.id == _ROW))


def sane_now(session: Session, now: datetime) -> datetime:
    """``now``, or the floor when ``now`` lies before it (the clock was stepped back).

    Advances the floor when ``now`` is more than ``STEP`` past it, with a conditional
    UPDATE (racing writers: the largest wins). Call inside a write transaction."""
    high_water = floor(session)
    if high_water is None:
        session.execute(
            dialect_insert(session, ClockFloor)
            .values(id=_ROW, high_water=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        high_water = floor(session) or now  # a racing first user may have won
    if now < high_water:
        return high_water
    if now - high_water > STEP:
        session.execute(
            update(ClockFloor)
            .where(ClockFloor.id == _ROW, ClockFloor.high_water < now)
            .values(high_water=now)
            .execution_options(synchronize_session=False)
        )
    return now

"""Task rows: enqueue, claim (conditional UPDATE), heartbeat, finish, retry.

The tasks table is the queue's truth. Executors (in-process threads or Celery) only
carry task ids; whoever claims the row runs the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, cast

from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.orm import Session

from safekeeper.db.models import Copy, Location, Task, TaskState


def enqueue(
    session: Session,
    *,
    kind: str,
    site: str,
    copy_id: int,
    source_copy_id: int | None,
    max_attempts: int,
    now: datetime,
) -> Task:
    task = Task(
        kind=kind,
        state=TaskState.QUEUED,
        site=site,
        copy_id=copy_id,
        source_copy_id=source_copy_id,
        attempts=0,
        max_attempts=max_attempts,
        not_before=now,
        created_at=now,
    )
    session.add(task)
    session.flush()
    return task


def _claimable(now: datetime, stale_before: datetime) -> object:
    return or_(
        and_(Task.state == TaskState.QUEUED, Task.not_before <= now),
        and_(
            Task.state == TaskState.RUNNING,
            Task.heartbeat_at < stale_before,
            Task.attempts < Task.max_attempts,
        ),
    )


def fail_exhausted(session: Session, now: datetime, heartbeat_timeout: timedelta) -> list[int]:
    """Fail running tasks whose worker died on their last allowed attempt; return ids."""
    return list(
        session.scalars(
            update(Task)
            .where(
                Task.state == TaskState.RUNNING,
                Task.heartbeat_at < now - heartbeat_timeout,
                Task.attempts >= Task.max_attempts,
            )
            .values(
                state=TaskState.FAILED,
                finished_at=now,
                heartbeat_at=None,
                last_error="the worker running it stopped responding on its last attempt",
            )
            .returning(Task.id)
        )
    )


def claim(
    session: Session, task_id: int, worker: str, now: datetime, heartbeat_timeout: timedelta
) -> bool:
    """Take one task (see ``claim_many``)."""
    return bool(claim_many(session, [task_id], worker, now, heartbeat_timeout))


class Claimed(NamedTuple):
    """A claimed task row, as the runner needs it (plain columns: no ORM objects to
    build for every task of a batch)."""

    id: int
    kind: str
    site: str
    copy_id: int
    source_copy_id: int | None
    attempts: int
    max_attempts: int
    payload: str | None


def claim_many(
    session: Session,
    task_ids: Sequence[int],
    worker: str,
    now: datetime,
    heartbeat_timeout: timedelta,
) -> list[Claimed]:
    """Take the tasks that are due, or running with a heartbeat older than the timeout
    (and attempts left); return the rows this worker won.

    One conditional UPDATE: of any number of workers racing for the same row, exactly
    one sees it come back.
    """
    if not task_ids:
        return []
    tasks = cast(Table, Task.__table__)
    rows = session.execute(
        update(tasks)
        .where(tasks.c.id.in_(task_ids), _claimable(now, now - heartbeat_timeout))  # type: ignore[arg-type]
        .values(
            state=TaskState.RUNNING,
            claimed_by=worker,
            heartbeat_at=now,
            attempts=tasks.c.attempts + 1,
        )
        .returning(*(tasks.c[name] for name in Claimed._fields))
    )
    return [Claimed(*row) for row in rows]


def heartbeat(session: Session, task_ids: Sequence[int], worker: str, now: datetime) -> set[int]:
    """Refresh the claims; return the ids still held. A task missing from the answer
    was cancelled or taken over by another worker: its outcome will not be recorded,
    so its work should stop."""
    if not task_ids:
        return set()
    return set(
        session.scalars(
            update(Task)
            .where(
                Task.id.in_(task_ids), Task.claimed_by == worker, Task.state == TaskState.RUNNING
            )
            .values(heartbeat_at=now)
            .returning(Task.id)
            .execution_options(synchronize_session=False)
        )
    )


def finish(
    session: Session,
    task_id: int,
    worker: str,
    state: TaskState,
    now: datetime,
    *,
    error: str | None = None,
    retry_at: datetime | None = None,
) -> bool:
    """End this worker's claim: done, failed, or back to queued until ``retry_at``.

    False when the claim was lost (another worker re-claimed a stale task); the caller
    must then not record anything about the task's outcome.
    """
    values: dict[str, object] = {"state": state, "last_error": error, "heartbeat_at": None}
    if state == TaskState.QUEUED:
        values["not_before"] = retry_at or now
        values["claimed_by"] = None
    else:
        values["finished_at"] = now
    tasks = cast(Table, Task.__table__)  # Core UPDATE: no ORM bookkeeping on a hot path
    result = session.execute(
        update(tasks)
        .where(
            tasks.c.id == task_id,
            tasks.c.claimed_by == worker,
            tasks.c.state == TaskState.RUNNING,
        )
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def finish_done(session: Session, task_ids: Sequence[int], worker: str, now: datetime) -> set[int]:
    """``finish`` as done for many tasks in one UPDATE; return the ids whose claim this
    worker still held (only their outcomes may be recorded)."""
    if not task_ids:
        return set()
    tasks = cast(Table, Task.__table__)
    return set(
        session.scalars(
            update(tasks)
            .where(
                tasks.c.id.in_(task_ids),
                tasks.c.claimed_by == worker,
                tasks.c.state == TaskState.RUNNING,
            )
            .values(state=TaskState.DONE, last_error=None, heartbeat_at=None, finished_at=now)
            .returning(tasks.c.id)
        )
    )


def due_task_ids(
    session: Session,
    now: datetime,
    heartbeat_timeout: timedelta,
    sites: Sequence[str] | None = None,
    limit: int = 1000,
) -> list[int]:
    query = select(Task.id).where(_claimable(now, now - heartbeat_timeout))  # type: ignore[arg-type]
    if sites is not None:
        query = query.where(Task.site.in_(sites))
    return list(session.scalars(query.order_by(Task.id).limit(limit)))


def next_due_time(session: Session, sites: Sequence[str] | None = None) -> datetime | None:
    """When the earliest queued task becomes due (None: nothing queued)."""
    query = select(Task.not_before).where(Task.state == TaskState.QUEUED)
    if sites is not None:
        query = query.where(Task.site.in_(sites))
    return session.scalar(query.order_by(Task.not_before).limit(1))


def live_count(session: Session, sites: Sequence[str] | None = None) -> int:
    query = select(func.count()).where(Task.state.in_([TaskState.QUEUED, TaskState.RUNNING]))
    if sites is not None:
        query = query.where(Task.site.in_(sites))
    return int(session.scalar(query) or 0)


class CancelledTask(NamedTuple):
    id: int
    kind: str
    copy_id: int
    #: The state it was cancelled in: ``queued`` or ``running``.
    was: str


def cancel(
    session: Session, task_ids: Sequence[int], now: datetime, reason: str
) -> list[CancelledTask]:
    """Cancel those of ``task_ids`` that are queued or running, and return them.

    A running task's claim ends here: its worker's next heartbeat finds it gone and
    stops the work, and its outcome can no longer be recorded (``finish`` only ends a
    running claim). Rows are locked first so a claim racing this reports truly.
    """
    if not task_ids:
        return []
    live = [TaskState.QUEUED, TaskState.RUNNING]
    rows = [
        CancelledTask(*row)
        for row in session.execute(
            select(Task.id, Task.kind, Task.copy_id, Task.state)
            .where(Task.id.in_(task_ids), Task.state.in_(live))
            .order_by(Task.id)
            .with_for_update()
        )
    ]
    session.execute(
        update(Task)
        .where(Task.id.in_([row.id for row in rows]), Task.state.in_(live))
        .values(state=TaskState.CANCELLED, finished_at=now, heartbeat_at=None, last_error=reason)
        .execution_options(synchronize_session=False)
    )
    return rows


def live_at(session: Session, location_names: Sequence[str]) -> list[int]:
    """Queued and running tasks whose copy is at one of the locations."""
    return list(
        session.scalars(
            select(Task.id)
            .join(Copy, Task.copy_id == Copy.id)
            .join(Location, Copy.location_id == Location.id)
            .where(
                Location.name.in_(location_names),
                Task.state.in_([TaskState.QUEUED, TaskState.RUNNING]),
            )
            .order_by(Task.id)
        )
    )


def requeue_failed(
    session: Session, task_ids: Sequence[int] | None, now: datetime, *, cancelled: bool = False
) -> list[int]:
    """Put failed tasks (and, with ``cancelled``, cancelled ones) back in the queue with
    a fresh attempt budget."""
    states = [TaskState.FAILED, TaskState.CANCELLED] if cancelled else [TaskState.FAILED]
    query = select(Task).where(Task.state.in_(states))
    if task_ids is not None:
        query = query.where(Task.id.in_(task_ids))
    tasks = session.scalars(query).all()
    for task in tasks:
        task.state = TaskState.QUEUED
        task.attempts = 0
        task.not_before = now
        task.finished_at = None
        task.claimed_by = None
    session.flush()
    return [task.id for task in tasks]

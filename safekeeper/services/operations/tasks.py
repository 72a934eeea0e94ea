"""Operator view of the task queue: listing tasks, retrying failed ones, cancelling."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db import tasks as task_rows
from safekeeper.db.copies import transition
from safekeeper.db.models import Blob, Copy, CopyState, Location, Task, TaskState
from safekeeper.engine.dispatch import dispatch
from safekeeper.errors import BadInput, Conflict, NotFound

if TYPE_CHECKING:
    from safekeeper.archive import Archive


#: The states a task can be cancelled in.
LIVE = (TaskState.QUEUED, TaskState.RUNNING)


@dataclass(frozen=True)
class TaskView:
    id: int
    kind: str
    state: str
    site: str
    blob: str
    location: str
    attempts: int
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None


def list_tasks(archive: Archive, *, failed_only: bool = False, limit: int = 200) -> list[TaskView]:
    query = (
        select(Task, Blob.sha256, Location.name)
        .join(Copy, Task.copy_id == Copy.id)
        .join(Blob, Copy.blob_id == Blob.id)
        .join(Location, Copy.location_id == Location.id)
        .order_by(Task.id.desc())
        .limit(limit)
    )
    if failed_only:
        query = query.where(Task.state == "failed")
    with archive.db.read() as session:
        return [
            TaskView(
                task.id,
                task.kind,
                task.state,
                task.site,
                sha256,
                location,
                task.attempts,
                task.last_error,
                task.created_at,
                task.finished_at,
            )
            for task, sha256, location in session.execute(query)
        ]


def describe_task(archive: Archive, task_id: int) -> tuple[str, Task | None]:
    """``task 12 (transfer of blob 3fa4c1d2e5f6a7b8 to archive)``, for log lines, and the
    row as it is now (None if there is no such task)."""
    with archive.db.read() as session:
        found = session.execute(
            select(Task, Blob.sha256, Location.name)
            .join(Copy, Task.copy_id == Copy.id)
            .join(Blob, Copy.blob_id == Blob.id)
            .join(Location, Copy.location_id == Location.id)
            .where(Task.id == task_id)
        ).one_or_none()
        if found is None:
            return f"task {task_id} (no such task)", None
        task, sha256, location = found
        session.expunge(task)
    if task.kind == "transfer":
        return f"task {task_id} (transfer of blob {sha256[:16]} to {location})", task
    if task.kind == "gc":
        batch = len(json.loads(task.payload or "{}").get("copy_ids", []))
        return f"task {task_id} (gc of {batch} copies at {location})", task
    return f"task {task_id} ({task.kind}, blob {sha256[:16]} at {location})", task


def retry_failed(archive: Archive, task_ids: Sequence[int] | None = None) -> list[int]:
    """Queue failed tasks again (all of them when ``task_ids`` is None). Tasks named by
    id may also be cancelled ones: retrying is how a cancellation is undone."""
    with archive.db.write() as session:
        now = archive.clock()
        requeued = task_rows.requeue_failed(session, task_ids, now, cancelled=task_ids is not None)
        if task_ids is not None and (unknown := sorted(set(task_ids) - set(requeued))):
            raise NotFound(f"no failed or cancelled task with id {', '.join(map(str, unknown))}")
        for task in session.scalars(select(Task).where(Task.id.in_(requeued))):
            if task.kind == "transfer":
                transition(session, task.copy_id, CopyState.FAILED, CopyState.PENDING, now)
    dispatch(archive, requeued)
    return requeued


@dataclass(frozen=True)
class CancelResult:
    #: Were queued: they will never run (a worker that gets their message skips them).
    cancelled: list[int]
    #: Were running: their workers stop them at the next heartbeat and record nothing.
    stopping: list[int]
    #: Running gc batches (``--location`` only): a batch is not stopped half-way.
    left_running: list[int]


def cancel_tasks(
    archive: Archive,
    task_ids: Sequence[int] | None = None,
    *,
    location: str | None = None,
    actor: str,
) -> CancelResult:
    """Cancel the given queued or running tasks, or every one whose copy is at
    ``location`` (a transfer's target, a gc batch's location).

    A cancelled transfer's copy becomes ``failed`` with the reason, so replication does
    not schedule it again; ``retry`` undoes the cancellation. A running gc batch is not
    cancelled: it deletes under its own claims and ends by itself. By id, all or
    nothing: an unknown id, an ended task or a running gc batch cancels none.
    """
    if (task_ids is None) == (location is None):
        raise BadInput("give task ids or a location, not both")
    if location is not None and location not in archive.config.locations:
        raise NotFound(f"no location named {location!r}")
    reason = f"cancelled by {actor}"
    with archive.db.write() as session:
        now = archive.clock()
        query = select(Task.id, Task.kind, Task.state).order_by(Task.id)
        if task_ids is not None:
            query = query.where(Task.id.in_(task_ids))
        else:
            query = (
                query.join(Copy, Task.copy_id == Copy.id)
                .join(Location, Copy.location_id == Location.id)
                .where(Location.name == location, Task.state.in_(LIVE))
            )
        found = session.execute(query).all()
        busy_gc = [t for t, kind, state in found if kind == "gc" and state == TaskState.RUNNING]
        if task_ids is not None:
            _check_cancellable(task_ids, found, busy_gc)
        wanted = [t for t, _kind, state in found if state in LIVE and t not in busy_gc]
        cancelled = task_rows.cancel(session, wanted, now, reason)
        for task in cancelled:
            if task.kind == "transfer":
                transition(
                    session,
                    task.copy_id,
                    CopyState.PENDING,
                    CopyState.FAILED,
                    now,
                    last_error=reason,
                )
    return CancelResult(
        cancelled=[t.id for t in cancelled if t.was == TaskState.QUEUED],
        stopping=[t.id for t in cancelled if t.was == TaskState.RUNNING],
        left_running=busy_gc,
    )


def _check_cancellable(
    task_ids: Sequence[int], found: Sequence[tuple[int, str, str]], busy_gc: Sequence[int]
) -> None:
    if unknown := sorted(set(task_ids) - {t for t, _kind, _state in found}):
        raise NotFound(f"no task with id {', '.join(map(str, unknown))}")
    if ended := [f"{t} ({state})" for t, _kind, state in found if state not in LIVE]:
        raise Conflict(f"already ended, nothing to cancel: task {', '.join(ended)}")
    if busy_gc:
        raise Conflict(
            f"task {', '.join(map(str, busy_gc))} is a running gc batch: it is not stopped "
            "half-way and ends by itself"
        )

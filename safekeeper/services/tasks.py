"""Operator view of the task queue: failed tasks, and retrying them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db import tasks as task_rows
from safekeeper.db.copies import transition
from safekeeper.db.models import Blob, Copy, CopyState, Location, Task
from safekeeper.engine.dispatch import dispatch
from safekeeper.errors import NotFound

if TYPE_CHECKING:
    from safekeeper.archive import Archive


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


def retry_failed(archive: Archive, task_ids: Sequence[int] | None = None) -> list[int]:
    """Queue failed tasks again (all of them when ``task_ids`` is None)."""
    with archive.db.write() as session:
        now = archive.clock()
        requeued = task_rows.requeue_failed(session, task_ids, now)
        if task_ids is not None and (unknown := sorted(set(task_ids) - set(requeued))):
            raise NotFound(f"no failed task with id {', '.join(map(str, unknown))}")
        for task in session.scalars(select(Task).where(Task.id.in_(requeued))):
            if task.kind == "transfer":
                transition(session, task.copy_id, CopyState.FAILED, CopyState.PENDING, now)
    dispatch(archive, requeued)
    return requeued

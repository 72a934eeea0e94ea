"""Run one task: claim it, execute its handler with heartbeats, record the outcome.

A handler does the slow work (I/O) without holding a transaction, then returns a
``Completion``: a function that records the result. The runner applies it in the same
transaction that marks the task done, and only if this worker still holds the claim —
so a worker that was presumed dead and replaced cannot record a stale result.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Task, TaskState
from safekeeper.engine.handlers import HANDLERS
from safekeeper.engine.types import Handler, TaskInfo
from safekeeper.errors import SafekeeperError, TransientStoreError

if TYPE_CHECKING:
    from safekeeper.archive import Archive


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def backoff(archive: Archive, attempts: int) -> timedelta:
    tasks = archive.config.tasks
    delay: timedelta = tasks.retry_base * (2 ** max(attempts - 1, 0))
    return min(delay, tasks.retry_max)


class _Heartbeat:
    """Refreshes the claim from a background thread while a handler runs."""

    def __init__(self, archive: Archive, task_id: int, worker: str) -> None:
        self._archive, self._task_id, self._worker = archive, task_id, worker
        self._stop = threading.Event()
        interval = archive.config.tasks.heartbeat_timeout.total_seconds() / 3
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._archive.db.write() as session:
                now = self._archive.clock()
                if not task_rows.heartbeat(session, self._task_id, self._worker, now):
                    return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_task(archive: Archive, task_id: int, worker: str | None = None) -> TaskState | None:
    """Claim and run one task. Returns its new state, or None if it was not claimable."""
    worker = worker or worker_name()
    timeout = archive.config.tasks.heartbeat_timeout
    with archive.db.write() as session:
        if not task_rows.claim(session, task_id, worker, archive.clock(), timeout):
            return None
        row = session.get_one(Task, task_id)
        task = TaskInfo.of(row)
    handler = HANDLERS.get(task.kind)
    if handler is None:
        return _record_failure(archive, task, worker, None, f"unknown task kind {task.kind!r}")
    try:
        with _Heartbeat(archive, task.id, worker):
            complete = handler.execute(archive, task)
    except TransientStoreError as exc:
        return _record_failure(archive, task, worker, handler, str(exc), transient=True)
    except SafekeeperError as exc:
        return _record_failure(archive, task, worker, handler, str(exc))
    except OSError as exc:  # local I/O trouble is worth another try
        return _record_failure(archive, task, worker, handler, str(exc), transient=True)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the task running forever
        error = f"unexpected {type(exc).__name__}: {exc}"
        return _record_failure(archive, task, worker, handler, error, transient=True)
    with archive.db.write() as session:
        now = archive.clock()
        if not task_rows.finish(session, task.id, worker, TaskState.DONE, now):
            return None  # our claim was taken over; the new owner records the outcome
        complete(session, now)
    return TaskState.DONE


def _record_failure(
    archive: Archive,
    task: TaskInfo,
    worker: str,
    handler: Handler | None,
    error: str,
    transient: bool = False,
) -> TaskState | None:
    final = not transient or task.attempts >= task.max_attempts
    state = TaskState.FAILED if final else TaskState.QUEUED
    with archive.db.write() as session:
        now = archive.clock()
        retry_at = now + backoff(archive, task.attempts)
        if not task_rows.finish(
            session, task.id, worker, state, now, error=error, retry_at=retry_at
        ):
            return None
        if handler is not None:
            handler.failed(session, task, error, final, now)
    return state


def reap_dead_tasks(archive: Archive) -> list[int]:
    """Fail tasks whose worker died on their last allowed attempt, and tell their
    handlers (a transfer's copy becomes ``failed``)."""
    with archive.db.write() as session:
        now = archive.clock()
        dead = task_rows.fail_exhausted(session, now, archive.config.tasks.heartbeat_timeout)
        for row in session.scalars(select(Task).where(Task.id.in_(dead))):
            handler = HANDLERS.get(row.kind)
            if handler is not None:
                info = TaskInfo.of(row)
                handler.failed(session, info, row.last_error or "worker died", True, now)
    return dead

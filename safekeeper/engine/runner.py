"""Run one task: claim it, execute its handler with heartbeats, record the outcome.

A handler does the slow work (I/O) without holding a transaction, then returns a
``Completion``: a function that records the result. The runner applies it in the same
transaction that marks the task done, and only if this worker still holds the claim —
so a worker that was presumed dead and replaced cannot record a stale result.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Task, TaskState
from safekeeper.engine.handlers import HANDLERS
from safekeeper.engine.types import Completion, Handler, TaskInfo
from safekeeper.errors import SafekeeperError, TransientStoreError

if TYPE_CHECKING:
    from safekeeper.archive import Archive

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def backoff(archive: Archive, attempts: int) -> timedelta:
    tasks = archive.config.tasks
    delay: timedelta = tasks.retry_base * (2 ** max(attempts - 1, 0))
    return min(delay, tasks.retry_max)


class _Heartbeat:
    """Refreshes this worker's claims from a background thread while handlers run, and
    tells a task's handler to stop (``TaskInfo.stop``) once its claim is gone."""

    def __init__(self, archive: Archive, tasks: Sequence[TaskInfo], worker: str) -> None:
        self._archive, self._worker = archive, worker
        self._tasks = {task.id: task for task in tasks}
        self._stop = threading.Event()
        interval = archive.config.tasks.heartbeat_timeout.total_seconds() / 3
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)

    def _beat(self, interval: float) -> None:
        while self._tasks and not self._stop.wait(interval):
            try:
                with self._archive.db.write() as session:
                    now = self._archive.clock()
                    held = task_rows.heartbeat(session, list(self._tasks), self._worker, now)
            except DBAPIError as exc:
                # A database hiccup must not end the heartbeats of a long transfer (another
                # worker would then run it too): try again at the next beat. The outcome
                # is recorded only if the claim is still ours, whatever happens here.
                log.warning("heartbeat for tasks %s failed, retrying: %s", list(self._tasks), exc)
                continue
            for task_id in [t for t in self._tasks if t not in held]:
                # Cancelled, or taken over after a stall: whatever this worker still did
                # would not be recorded, so stop it at its next chunk.
                log.info("task %d is no longer this worker's (cancelled?): stopping it", task_id)
                self._tasks.pop(task_id).stop.set()

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Outcome:
    task: TaskInfo
    handler: Handler | None
    completion: Completion | None = None
    error: str = ""
    transient: bool = False


def _execute(archive: Archive, task: TaskInfo) -> _Outcome:
    """Run the handler (no transaction held); classify what went wrong, if anything."""
    handler = HANDLERS.get(task.kind)
    if handler is None:
        return _Outcome(task, None, error=f"unknown task kind {task.kind!r}")
    if task.stop.is_set():  # cancelled while it waited for a thread of the pool
        return _Outcome(task, handler, error="cancelled before it started")
    try:
        return _Outcome(task, handler, completion=handler.execute(archive, task))
    except TransientStoreError as exc:
        return _Outcome(task, handler, error=str(exc), transient=True)
    except SafekeeperError as exc:
        return _Outcome(task, handler, error=str(exc))
    except OSError as exc:  # local I/O trouble is worth another try
        return _Outcome(task, handler, error=str(exc), transient=True)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bug must not leave the task running forever
        # BaseException, not Exception: a panic in native code (pyo3's PanicException)
        # derives from BaseException, and must fail this attempt, not the worker.
        error = f"unexpected {type(exc).__name__}: {_first_line(exc)}"
        return _Outcome(task, handler, error=error, transient=True)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().split("\n", 1)[0]


def _record(session: Session, archive: Archive, worker: str, outcome: _Outcome) -> TaskState | None:
    """Record one outcome, if this worker still holds the claim (else None: the worker
    that took the task over records it)."""
    task, now = outcome.task, archive.clock()
    if outcome.completion is not None:
        if not task_rows.finish(session, task.id, worker, TaskState.DONE, now):
            return None
        outcome.completion(session, now)
        return TaskState.DONE
    final = not outcome.transient or task.attempts >= task.max_attempts
    state = TaskState.FAILED if final else TaskState.QUEUED
    retry_at = now + backoff(archive, task.attempts)
    if not task_rows.finish(
        session, task.id, worker, state, now, error=outcome.error, retry_at=retry_at
    ):
        return None
    if outcome.handler is not None:
        outcome.handler.failed(session, task, outcome.error, final, now)
    return state


def run_task(archive: Archive, task_id: int, worker: str | None = None) -> TaskState | None:
    """Claim and run one task. Returns its new state, or None if it was not claimable."""
    states = run_batch(archive, [task_id], worker or worker_name())
    return states[0] if states else None


def run_batch(
    archive: Archive,
    task_ids: Sequence[int],
    worker: str,
    pool: ThreadPoolExecutor | None = None,
) -> list[TaskState | None]:
    """Claim the claimable ones of ``task_ids`` in one statement, run their handlers
    (on ``pool`` if given), make the stores durable once, and record every outcome in
    one transaction. Returns the new state of each task claimed."""
    with archive.db.write() as session:
        tasks = [
            TaskInfo.of(row)
            for row in task_rows.claim_many(
                session, task_ids, worker, archive.clock(), archive.config.tasks.heartbeat_timeout
            )
        ]
    if not tasks:
        return []

    def execute(task: TaskInfo) -> _Outcome:
        with archive.deferred_durability():
            return _execute(archive, task)

    with _Heartbeat(archive, tasks, worker):
        outcomes = list(pool.map(execute, tasks)) if pool else [execute(t) for t in tasks]
        archive.sync_stores()  # everything written is durable before anything is recorded
    with archive.db.write() as session:
        return [_record(session, archive, worker, outcome) for outcome in outcomes]


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

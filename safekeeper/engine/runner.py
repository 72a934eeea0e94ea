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
import time
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
from safekeeper.engine.outage import database_unavailable, wait_for_database
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
    """Refreshes this worker's claims from a background thread while handlers run."""

    def __init__(self, archive: Archive, task_ids: Sequence[int], worker: str) -> None:
        self._archive, self._task_ids, self._worker = archive, list(task_ids), worker
        self._stop = threading.Event()
        interval = archive.config.tasks.heartbeat_timeout.total_seconds() / 3
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with self._archive.db.write() as session:
                    now = self._archive.clock()
                    if not task_rows.heartbeat(session, self._task_ids, self._worker, now):
                        return  # every claim was taken over: nothing left to keep alive
            except DBAPIError as exc:
                # A database hiccup must not end the heartbeats of a long transfer (another
                # worker would then run it too): try again at the next beat. The outcome
                # is recorded only if the claim is still ours, whatever happens here.
                log.warning("heartbeat for tasks %s failed, retrying: %s", self._task_ids, exc)

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
    #: The database went away under the handler: not the task's fault, so this attempt
    #: does not use up the task's last one.
    outage: bool = False


def _execute(archive: Archive, task: TaskInfo) -> _Outcome:
    """Run the handler (no transaction held); classify what went wrong, if anything."""
    handler = HANDLERS.get(task.kind)
    if handler is None:
        return _Outcome(task, None, error=f"unknown task kind {task.kind!r}")
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
        if database_unavailable(exc):
            error = f"database unavailable: {_first_line(exc)}"
            return _Outcome(task, handler, error=error, transient=True, outage=True)
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
    final = not outcome.transient or (task.attempts >= task.max_attempts and not outcome.outage)
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

    with _Heartbeat(archive, [t.id for t in tasks], worker):
        outcomes = list(pool.map(execute, tasks)) if pool else [execute(t) for t in tasks]
        archive.sync_stores()  # everything written is durable before anything is recorded
    return _record_all(archive, worker, outcomes)


def _record_all(archive: Archive, worker: str, outcomes: list[_Outcome]) -> list[TaskState | None]:
    """Record the outcomes in one transaction, waiting out a database outage.

    The work is done: losing its outcome to a database restart would leave the tasks
    running until their claims go stale, then run them again. The claims stay ours
    for ``heartbeat_timeout`` after the last beat, so that is how long waiting is
    worth it; after that, ``finish`` finds another worker's claim and records nothing.
    """
    deadline = time.monotonic() + archive.config.tasks.heartbeat_timeout.total_seconds()
    while True:
        try:
            with archive.db.write() as session:
                return [_record(session, archive, worker, outcome) for outcome in outcomes]
        except DBAPIError as exc:
            if not database_unavailable(exc):
                raise
            log.warning(
                "recording tasks %s: database unavailable, waiting for it: %s",
                [o.task.id for o in outcomes],
                _first_line(exc),
            )
            if not wait_for_database(archive, deadline - time.monotonic()):
                raise


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

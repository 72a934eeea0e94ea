"""Run one task: claim it, execute its handler with heartbeats, record the outcome.

A handler does the slow work (I/O) without holding a transaction, then returns a
``Completion``: a function that records the result. The runner applies it in the same
transaction that marks the task done, and only if this worker still holds the claim —
so a worker that was presumed dead and replaced cannot record a stale result. The
heartbeat thread is also the watchdog of stuck threads (``engine.watchdog``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, cast

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Task, TaskState
from safekeeper.engine import watchdog
from safekeeper.engine.handlers import HANDLERS
from safekeeper.engine.outage import database_unavailable, wait_for_database
from safekeeper.engine.types import BulkCompletion, Completion, Handler, Preparing, TaskInfo
from safekeeper.engine.watchdog import STALLED_PREFIX, Progress
from safekeeper.errors import SafekeeperError, TransientStoreError, first_line

if TYPE_CHECKING:
    from safekeeper.archive import Archive

log = logging.getLogger(__name__)

#: Seconds between two looks at a batch's threads for ones the watchdog gave up.
GATHER_POLL_SECONDS = 0.5


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def backoff(archive: Archive, attempts: int) -> timedelta:
    tasks = archive.config.tasks
    delay: timedelta = tasks.retry_base * (2 ** max(attempts - 1, 0))
    return min(delay, tasks.retry_max)


class _Heartbeat:
    """Refreshes this worker's claims from a background thread while handlers run, and
    is the watchdog: an attempt whose thread moved no bytes for ``stall_timeout`` is
    failed (so the task can be claimed again) and its thread told to stop. A task whose
    claim is gone (cancelled, taken over) is told to stop too (``TaskInfo.stop``)."""

    def __init__(self, archive: Archive, tasks: Sequence[TaskInfo], worker: str) -> None:
        self._archive, self._worker = archive, worker
        self._tasks = {task.id: task for task in tasks}
        self.progress = {task.id: Progress(task.id) for task in tasks}
        #: What the watchdog recorded for the attempts it failed, by task id.
        self.stalled: dict[int, TaskState | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        config = archive.config.tasks
        self._stall_after = config.stall_timeout.total_seconds()
        # Often enough for both jobs: keep claims fresh, and notice a stall soon.
        interval = min(config.heartbeat_timeout.total_seconds() / 3, self._stall_after / 4)
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)

    def _beat(self, interval: float) -> None:
        while self._tasks and not self._stop.wait(interval):
            try:
                self._check_progress()
            except DBAPIError as exc:  # the stall is noticed again at the next beat
                log.warning("watchdog for tasks %s failed, retrying: %s", list(self._tasks), exc)
            live = [t for t in self._tasks if t not in self.stalled]
            if not live:
                return
            try:
                with self._archive.db.write() as session:
                    now = self._archive.clock()
                    held = task_rows.heartbeat(session, live, self._worker, now)
            except DBAPIError as exc:
                # A database hiccup must not end the heartbeats of a long transfer (another
                # worker would then run it too): try again at the next beat. The outcome
                # is recorded only if the claim is still ours, whatever happens here.
                log.warning("heartbeat for tasks %s failed, retrying: %s", list(self._tasks), exc)
                continue
            for task_id in [t for t in live if t not in held]:
                # Cancelled, or taken over after a stall: whatever this worker still did
                # would not be recorded, so stop it at its next chunk.
                log.info("task %d is no longer this worker's (cancelled?): stopping it", task_id)
                self._tasks.pop(task_id).stop.set()

    def _check_progress(self) -> None:
        # A task that has not started waits for a thread, or for the tasks before it
        # in its batch (one Celery message runs its batch in order): it is silent only
        # as long as the whole batch is, so it is given up only if every thread ahead
        # of it is stuck (else a long batch would fail its last tasks for waiting).
        batch_idle = min(p.idle_seconds() for p in self.progress.values())
        for task_id, progress in self.progress.items():
            if task_id not in self._tasks:
                continue  # told to stop: its claim is gone
            idle = progress.idle_seconds() if progress.started else batch_idle
            if task_id in self.stalled or progress.finished or idle < self._stall_after:
                continue
            task = self._tasks[task_id]
            handler = HANDLERS.get(task.kind)
            if handler is None or not handler.reports_progress:
                continue  # silence means nothing for a task that never reports
            error = (
                f"{STALLED_PREFIX} no progress for {idle:.0f} s ({progress.bytes} bytes "
                f"moved) in {task.kind} task {task_id}, {progress.subject}"
            )
            # Fail the attempt first, then tell the thread: once it is told, its
            # outcome is never recorded (see run_batch), so the record is ours to make.
            with self._archive.db.write() as session:
                state = _record(
                    session,
                    self._archive,
                    self._worker,
                    _Outcome(task, handler, error=error, transient=True),
                )
            progress.give_up(error)
            with self._lock:
                self.stalled[task_id] = state
            log.error(
                "%s; worker %s gave the attempt up (%s): the task can be claimed again",
                error,
                self._worker,
                state or "claim already lost",
            )

    def is_stalled(self, task_id: int) -> bool:
        with self._lock:
            return task_id in self.stalled

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
        if database_unavailable(exc):
            error = f"database unavailable: {first_line(exc)}"
            return _Outcome(task, handler, error=error, transient=True, outage=True)
        error = f"unexpected {type(exc).__name__}: {first_line(exc)}"
        return _Outcome(task, handler, error=error, transient=True)


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
    return list(run_claimed(archive, task_ids, worker, pool).values())


def run_claimed(
    archive: Archive,
    task_ids: Sequence[int],
    worker: str,
    pool: ThreadPoolExecutor | None = None,
) -> dict[int, TaskState | None]:
    """``run_batch``, by task id: the new state of each task claimed (None: its claim
    was lost before its outcome could be recorded)."""
    with archive.db.write() as session:
        tasks = [
            TaskInfo.of(row)
            for row in task_rows.claim_many(
                session, task_ids, worker, archive.clock(), archive.config.tasks.heartbeat_timeout
            )
        ]
    if not tasks:
        return {}

    with _Heartbeat(archive, tasks, worker) as watch:
        tasks = _prepare(archive, tasks)

        def execute(task: TaskInfo) -> _Outcome:
            progress = watch.progress[task.id]
            token = watchdog.running(progress)
            try:
                progress.start()
            except watchdog.TaskStalled:  # given up while it waited: not run at all
                watchdog.finished(token)
                progress.finished = True
                return _Outcome(task, None)
            try:
                with archive.deferred_durability():
                    return _execute(archive, task)
            finally:
                progress.finished = True
                watchdog.finished(token)

        outcomes = _gather(watch, tasks, execute, pool)
        archive.sync_stores()  # everything written is durable before anything is recorded
    # The watchdog has stopped: what it gave up is final. Those attempts were recorded
    # as failed then; their late outcomes are not (the task may run elsewhere by now).
    recorded = [outcome for outcome in outcomes if outcome.task.id not in watch.stalled]
    ids = [outcome.task.id for outcome in recorded]
    states = dict(zip(ids, _record_all(archive, worker, recorded), strict=True))
    return {t.id: watch.stalled[t.id] if t.id in watch.stalled else states[t.id] for t in tasks}


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
                done = _record_done(session, archive, worker, outcomes)
                return [
                    done[outcome.task.id]
                    if outcome.task.id in done
                    else _record(session, archive, worker, outcome)
                    for outcome in outcomes
                ]
        except DBAPIError as exc:
            if not database_unavailable(exc):
                raise
            log.warning(
                "recording tasks %s: database unavailable, waiting for it: %s",
                [o.task.id for o in outcomes],
                first_line(exc),
            )
            if not wait_for_database(archive, deadline - time.monotonic()):
                raise


def _record_done(
    session: Session, archive: Archive, worker: str, outcomes: list[_Outcome]
) -> dict[int, TaskState | None]:
    """Record the successes whose completions can be recorded in bulk: one UPDATE ends
    every claim this worker still holds, then one set-based call per completion type
    records the results of those (and only those) tasks. Returns the state of each
    task it took care of; the rest are recorded one by one (``_record``)."""
    bulk = [
        outcome
        for outcome in outcomes
        if outcome.completion is not None and hasattr(outcome.completion, "record_many")
    ]
    if not bulk:
        return {}
    now = archive.clock()
    held = task_rows.finish_done(session, [o.task.id for o in bulk], worker, now)
    by_type: dict[type, list[BulkCompletion]] = {}
    for outcome in bulk:
        if outcome.task.id in held:
            completion = cast(BulkCompletion, outcome.completion)
            by_type.setdefault(type(completion), []).append(completion)
    for kind, completions in by_type.items():
        cast(type[BulkCompletion], kind).record_many(session, completions, now)
    return {o.task.id: TaskState.DONE if o.task.id in held else None for o in bulk}


def _prepare(archive: Archive, tasks: list[TaskInfo]) -> list[TaskInfo]:
    """Let each handler that can read what its tasks of this batch need in one go
    (``Preparing``); a task it says nothing about reads for itself. Reading is only an
    optimisation: should it fail, every task reads for itself (and fails there, if it
    must, as an attempt of its own)."""
    by_kind: dict[str, list[TaskInfo]] = {}
    for task in tasks:
        by_kind.setdefault(task.kind, []).append(task)
    prepared: dict[int, object] = {}
    for kind, of_kind in by_kind.items():
        handler = HANDLERS.get(kind)
        if not isinstance(handler, Preparing):
            continue
        try:
            prepared.update(handler.prepare(archive, of_kind))
        except (SQLAlchemyError, SafekeeperError) as exc:
            log.warning("reading ahead for %d %s tasks failed: %s", len(of_kind), kind, exc)
    if not prepared:
        return tasks
    return [
        dataclasses.replace(task, prepared=prepared[task.id]) if task.id in prepared else task
        for task in tasks
    ]


def _gather(
    watch: _Heartbeat,
    tasks: Sequence[TaskInfo],
    execute: Callable[[TaskInfo], _Outcome],
    pool: ThreadPoolExecutor | None,
) -> list[_Outcome]:
    """Run every task; on a pool, stop waiting for those the watchdog gave up (their
    threads may stay stuck), so the others' outcomes are recorded."""
    if pool is None:
        outcomes = [execute(task) for task in tasks]
    else:
        futures = {pool.submit(execute, task): task for task in tasks}
        pending = set(futures)
        while pending:
            _done, pending = wait(pending, timeout=GATHER_POLL_SECONDS)
            pending = {f for f in pending if not watch.is_stalled(futures[f].id)}
        # A future still pending belongs to a task given up: a placeholder, never recorded.
        outcomes = [f.result() if f.done() else _Outcome(futures[f], None) for f in futures]
    return outcomes


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

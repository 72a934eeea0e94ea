"""A worker process: run the tasks of one or more sites, in the foreground, until stopped.

Celery executor: a Celery worker consumes the sites' queues (``engine.celery_app``)
while a maintenance thread

- re-sends the ids of the sites' tasks that are due in the database but may have no
  message: retries whose backoff has passed (the runner only re-queues the row),
  messages the broker lost, and tasks of a worker that died (stale heartbeat); after
  each (re)connection to the broker or a failed send, every due task at once. A
  duplicate message is harmless: claiming is a conditional UPDATE, only one wins;
- runs a replication pass every ``tasks.replicate_interval`` and sends its tasks.

Embedded executor: one loop does the replication pass and runs the sites' due tasks
on a thread pool, about once a second, until SIGTERM or SIGINT (the tasks running
then finish first; a second signal stops at once, and their claims go stale).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from types import FrameType

from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Task, TaskState
from safekeeper.engine.dispatch import dispatch
from safekeeper.engine.embedded import run_due
from safekeeper.engine.outage import database_unavailable
from safekeeper.engine.runner import reap_dead_tasks, worker_name
from safekeeper.errors import ConfigError, SafekeeperError
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.operations.status import REPORT_SECONDS, report_alive

logger = logging.getLogger("safekeeper.worker")

#: Seconds between two rounds of the embedded loop.
EMBEDDED_ROUND_SECONDS = 1.0
#: The longest pause between two re-send rounds (shorter with a short heartbeat timeout).
RESEND_SECONDS = 5.0
#: How many due task ids one re-send round looks at.
RESEND_LIMIT = 10_000


def _guard(what: str, action: Callable[[], object]) -> bool:
    """Run one round of background work; log a failure and keep the worker alive.
    Returns whether it succeeded."""
    try:
        action()
    except SafekeeperError as exc:
        logger.warning("%s failed: %s", what, exc)
    except Exception as exc:
        if database_unavailable(exc):  # expected while it restarts: no traceback
            logger.warning("%s failed: database unavailable: %s", what, exc.orig)
        else:
            logger.exception("%s failed", what)
    else:
        return True
    return False


def _replicate(archive: Archive) -> None:
    result = replication_pass(archive)
    if result.wanted or result.scheduled:
        logger.info(
            "replication pass: %d copies wanted, %d transfers scheduled",
            result.wanted,
            result.scheduled,
        )
    dispatch(archive, result.task_ids)


class Resender:
    """Picks the due tasks of some sites that need a (new) message, and sends them.

    A task needs one when it is queued after a failed attempt (its backoff has
    passed: nobody sends a message for a retry), when it has been due for longer than
    the heartbeat timeout without being claimed (its message was probably lost), or
    when it is running with a stale heartbeat (its worker died). A task is re-sent at
    most once per heartbeat timeout for the same attempt, so a backlog is not flooded
    with duplicates.

    Except after an outage: when the worker has reconnected to the broker (which may
    have restarted and lost its messages) or a send failed, the next round sends every
    due task at once (``resend_all``). Only due tasks: one running with a fresh
    heartbeat is not claimable, so its duplicate message does nothing.
    """

    def __init__(self, archive: Archive, sites: Sequence[str]) -> None:
        self.archive = archive
        self.sites = list(sites)
        self.grace = archive.config.tasks.heartbeat_timeout
        self._sent: dict[int, tuple[int, datetime]] = {}  # id -> (attempts, when sent)
        #: Send every due task in the next round, without waiting for the grace.
        self.resend_all = False

    def pick(self) -> list[tuple[int, str]]:
        """The ``(task id, site)`` pairs to send now (and remember them as sent)."""
        now = self.archive.clock()
        with self.archive.db.read() as session:
            due = task_rows.due_task_ids(session, now, self.grace, self.sites, RESEND_LIMIT)
            rows = (
                session.execute(
                    select(Task.id, Task.site, Task.state, Task.attempts, Task.not_before)
                    .where(Task.id.in_(due))
                    .order_by(Task.id)
                ).all()
                if due
                else []
            )
        picked: list[tuple[int, str]] = []
        for task_id, site, task_state, attempts, not_before in rows:
            if not self.resend_all:
                first_message_pending = (
                    task_state == TaskState.QUEUED
                    and attempts == 0
                    and now - not_before < self.grace
                )
                if first_message_pending:
                    continue
                last = self._sent.get(task_id)
                if last is not None and last[0] == attempts and now - last[1] < self.grace:
                    continue
            self._sent[task_id] = (attempts, now)
            picked.append((task_id, site))
        live = set(due)
        for task_id in [t for t in self._sent if t not in live]:
            del self._sent[task_id]
        return picked

    def round(self) -> int:
        from safekeeper.engine.celery_app import send_tasks

        picked = self.pick()
        if picked:
            try:
                send_tasks(self.archive, picked)
            except SafekeeperError:
                # Not sent: forget them, and send everything due once the broker is back
                # (it may come back empty), not a heartbeat timeout later.
                for task_id, _site in picked:
                    self._sent.pop(task_id, None)
                self.resend_all = True
                raise
            logger.info("re-sent %d due tasks: %s", len(picked), [t for t, _ in picked])
        self.resend_all = False
        return len(picked)


class _Reporter:
    """Reports this process in the ``workers`` table every ``REPORT_SECONDS``, so
    ``safekeeper status`` shows who runs which sites with which configuration."""

    def __init__(self, archive: Archive, role: str, sites: Sequence[str]) -> None:
        self.archive, self.role, self.sites = archive, role, list(sites)
        self.name = worker_name()
        self._next = 0.0

    def tick(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + REPORT_SECONDS
        _guard(
            "reporting this worker",
            lambda: report_alive(self.archive, self.name, self.role, self.sites),
        )


def _maintenance_loop(
    archive: Archive, sites: Sequence[str], stop: threading.Event, connected: threading.Event
) -> None:
    """Re-send due tasks every few seconds, and at once with every due task when the
    worker has (re)connected to the broker (``connected``); a replication pass every
    replicate_interval (the first one ran before the worker started consuming)."""
    tasks = archive.config.tasks
    resender = Resender(archive, sites)
    reporter = _Reporter(archive, "celery-worker", sites)
    pause = min(RESEND_SECONDS, max(tasks.heartbeat_timeout.total_seconds() / 2, 0.5))
    next_pass = time.monotonic() + tasks.replicate_interval.total_seconds()
    while not stop.is_set():
        reporter.tick()
        if time.monotonic() >= next_pass:
            next_pass = time.monotonic() + tasks.replicate_interval.total_seconds()
            if not _guard("replication pass", lambda: _replicate(archive)):
                resender.resend_all = True  # its tasks may have no message
        if connected.is_set():
            connected.clear()
            resender.resend_all = True
        _guard("failing tasks whose worker died", lambda: reap_dead_tasks(archive))
        _guard("re-sending due tasks", resender.round)
        connected.wait(pause)  # stop sets it too


def run(archive: Archive, sites: Sequence[str]) -> int:
    """Run until stopped; return the process exit code."""
    if archive.config.tasks.executor == "celery":
        return _run_celery(archive, sites)
    _run_embedded(archive, sites)
    return 0


def configured_sites(archive: Archive) -> list[str]:
    config = archive.config
    return sorted(set(config.sites) | {loc.site for loc in config.locations.values()})


def _run_celery(archive: Archive, sites: Sequence[str]) -> int:
    try:
        from safekeeper.engine.celery_app import start_worker
    except ImportError as exc:
        raise ConfigError(
            f'{archive.config_origin}: executor = "celery" needs Celery and a broker '
            f"client (pip install 'celery[redis]'): {exc}"
        ) from exc

    stop, connected = threading.Event(), threading.Event()
    maintenance = threading.Thread(
        target=_maintenance_loop,
        args=(archive, sites, stop, connected),
        name="safekeeper-maintenance",
        daemon=True,
    )

    def on_start() -> None:
        logger.info("worker for sites %s", ", ".join(sites))
        _guard("replication pass", lambda: _replicate(archive))
        maintenance.start()

    def on_connect() -> None:
        logger.info("connected to the broker: re-sending every due task")
        connected.set()

    try:
        return start_worker(archive, sites, on_start=on_start, on_connect=on_connect)
    finally:
        stop.set()
        connected.set()
        if maintenance.is_alive():
            maintenance.join(timeout=30)


def _run_embedded(archive: Archive, sites: Sequence[str]) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s"
        )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping after the running tasks", signum)
        stop.set()
        # A second signal stops at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info("embedded worker for sites %s", ", ".join(sites))
    try:
        embedded_loop(archive, sites, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("worker stopped")


def embedded_loop(archive: Archive, sites: Sequence[str], stop: threading.Event) -> None:
    """The embedded executor's work until ``stop``: a replication pass every
    ``tasks.replicate_interval`` (the first at once) and the sites' due tasks about
    once a second. ``safekeeper worker`` runs it in the foreground, ``safekeeper
    serve`` on a thread beside the server."""
    interval: timedelta = archive.config.tasks.replicate_interval
    reporter = _Reporter(archive, "worker", sites)
    next_pass = time.monotonic()
    while not stop.is_set():
        reporter.tick()
        if time.monotonic() >= next_pass:
            next_pass = time.monotonic() + interval.total_seconds()
            _guard("replication pass", lambda: _replicate(archive))
        _guard("running due tasks", lambda: run_due(archive, sites=sites))
        stop.wait(EMBEDDED_ROUND_SECONDS)

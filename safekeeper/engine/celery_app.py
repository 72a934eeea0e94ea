"""The Celery executor: one queue per site, messages that only say "look at tasks N…".

The tasks table stays the queue's truth (``safekeeper.db.tasks``). A message carries
a task id, or a list of them (``send_batches``: new work is sent in batches, so a
worker pays for a claim, a sync and a commit per batch, not per task); the worker that
receives it calls ``runner.run_claimed``, whose conditional claim decides whether
there is anything to do. So a lost message, a duplicate, or a message redelivered
after its worker died are all harmless: ``safekeeper worker`` re-sends the ids of
tasks that are due in the database (one per message), and only one claim can win.

Settings and why:

- one queue per site, ``safekeeper.site.<site>``: a task runs where its data can be
  reached (see ``services.copies.replication`` for which site a transfer runs on);
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only
  after its task ran, so a worker that is killed mid-task leaves it unacknowledged;
- the broker's visibility timeout is a bit longer than the heartbeat timeout: Redis
  hands an unacknowledged message out again after it, by which time the dead worker's
  claim is stale and can be taken over;
- the threads pool, not prefork, so one process owns its SQLAlchemy engine and its
  stores (no connection is ever shared across a fork);
- no result backend: task outcomes are in the database;
- a lost broker connection is retried forever, at most ``RECONNECT_MAX_SECONDS``
  apart (Celery's own backoff grows to 30 s, and gives up after 100 tries), and each
  (re)connection calls ``start_worker``'s ``on_connect``: the worker then re-sends the
  queued tasks at once, since a restarted broker may have lost their messages;
- a task that finds the database unavailable waits for it, holding its message,
  instead of failing: with one message per thread, the worker stops taking messages
  until the database is back (see ``engine.outage``).
- socket timeouts on a Redis broker and few publish retries: a broker that accepts
  connections but does not answer (a stuck server, a black-holing firewall) makes a
  command fail within seconds with one ``error:`` line instead of hanging.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps, signals
from celery.exceptions import Reject
from celery.worker.consumer import Consumer
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from safekeeper.db.models import TaskState
from safekeeper.engine import outage
from safekeeper.engine.runner import run_claimed, worker_name
from safekeeper.errors import SafekeeperError
from safekeeper.services.operations.tasks import describe_task

if TYPE_CHECKING:
    from safekeeper.archive import Archive
    from safekeeper.config import Config

log = logging.getLogger("safekeeper.worker")

TASK_NAME = "safekeeper.run_task"
#: Celery's per-message lines ("received", "succeeded in 0.01s") name only its own
#: message id; ``_log_outcome`` says the same with the safekeeper task, so these
#: stay quiet below WARNING (their failures and errors still show).
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")
QUEUE_PREFIX = "safekeeper.site."
#: The most task ids one message carries (``send_batches``).
MESSAGE_BATCH = 256
#: The longest pause between two attempts to reconnect to the broker.
RECONNECT_MAX_SECONDS = 2.0


#: The archive of this worker process, set by ``start_worker`` before it consumes.
_worker_archive: Archive | None = None
#: Producer apps by archive, so each sending process keeps one broker connection pool.
_producers: weakref.WeakKeyDictionary[Archive, Any] = weakref.WeakKeyDictionary()
_producers_lock = threading.Lock()


class BrokerUnavailable(SafekeeperError):
    """The task broker could not be reached; the tasks stay recorded in the database."""

    code = "broker_unavailable"
    status = 503


def queue_name(site: str) -> str:
    return f"{QUEUE_PREFIX}{site}"


def all_sites(config: Config) -> list[str]:
    """Every site the configuration names, declared or used by a location."""
    return sorted(set(config.sites) | {loc.site for loc in config.locations.values()})


def visibility_timeout(heartbeat_timeout: timedelta) -> int:
    """Seconds before the broker redelivers an unacknowledged message: a bit more than
    the heartbeat timeout, so the redelivered message finds the dead worker's claim
    already stale."""
    seconds = heartbeat_timeout.total_seconds()
    return int(seconds * 1.25 + 5)


def _queues(sites: Iterable[str]) -> dict[str, dict[str, str]]:
    """Queue declarations: each site's queue bound to a direct exchange of its name."""
    names = [queue_name(site) for site in sites]
    return {
        name: {"exchange": name, "exchange_type": "direct", "routing_key": name} for name in names
    }


def _run(task_ids: int | list[int]) -> str | None:
    """The Celery task body: claim and run the tasks of the message with this worker's
    archive, as one batch (``runner.run_claimed``: one claim, one sync, one commit).
    A message carries one task id (re-sends) or a list of them (``send_batches``).

    While the database is unavailable, wait for it rather than fail: a failed Celery
    task is acknowledged, and its message gone. A worker told to stop while waiting
    hands the message back to the broker.
    """
    archive = _worker_archive
    if archive is None:
        raise RuntimeError("safekeeper.run_task called outside a safekeeper worker")
    ids = [int(t) for t in task_ids] if isinstance(task_ids, list) else [int(task_ids)]
    worker, what = worker_name(), _ids_text(ids)
    while True:
        try:
            states = run_claimed(archive, ids, worker)
        except DBAPIError as exc:
            if not outage.database_unavailable(exc):
                log.exception("%s: running it failed", _name(archive, ids))
                raise
            log.warning("%s: database unavailable, waiting for it: %s", what, exc.orig)
            if not outage.wait_for_database(archive):
                raise Reject(f"database unavailable: {exc.orig}", requeue=True) from exc
            log.info("%s: the database is back", what)
            continue
        except Exception:
            log.exception("%s: running it failed", _name(archive, ids))
            raise
        for task_id in ids:
            _log_outcome(archive, task_id, worker, states.get(task_id))
        if len(ids) == 1:
            state = states.get(ids[0])
            return state.value if state is not None else None
        return ", ".join(f"{n} {s}" for s, n in sorted(_tally(states).items()))


def _ids_text(ids: Sequence[int]) -> str:
    if len(ids) == 1:
        return f"task {ids[0]}"
    return f"tasks {ids[0]}..{ids[-1]} ({len(ids)})"


def _tally(states: dict[int, TaskState | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        name = state.value if state is not None else "skipped"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _name(archive: Archive, task_ids: Sequence[int]) -> str:
    """The task's description, or just the ids when the database cannot say more (the
    error being reported may well be the database's)."""
    if len(task_ids) != 1:
        return _ids_text(task_ids)
    try:
        return describe_task(archive, task_ids[0])[0]
    except SQLAlchemyError:
        return f"task {task_ids[0]}"


def _log_outcome(archive: Archive, task_id: int, worker: str, state: TaskState | None) -> None:
    """One line per message, naming the task, its kind, blob and location: a success
    at DEBUG (routine), a retry or a cancellation at INFO/WARNING, a failure at ERROR."""
    if state == TaskState.DONE and not log.isEnabledFor(logging.DEBUG):
        return  # the common case costs no query
    what, task = describe_task(archive, task_id)
    error = task.last_error if task is not None else None
    if state == TaskState.DONE:
        log.debug("%s: done", what)
    elif state == TaskState.QUEUED:
        log.warning("%s: attempt failed, will retry: %s", what, error)
    elif state == TaskState.FAILED:
        log.error("%s: failed: %s", what, error)
    elif task is not None and task.state == TaskState.CANCELLED:
        if task.claimed_by == worker:
            log.info("%s: cancelled while running; stopped, nothing recorded", what)
        else:
            log.info("%s: cancelled; skipped", what)
    else:
        # A duplicate message, a task not yet due or claimed elsewhere: nothing to do.
        log.debug("%s: skipped (%s)", what, task.state if task is not None else "gone")


#: Seconds a Redis broker may take to accept a connection, and to answer a command.
#: Workers block in BRPOP for 1 s at a time, well inside the answer timeout.
BROKER_CONNECT_TIMEOUT = 5.0
BROKER_SOCKET_TIMEOUT = 5.0


def _transport_options(broker_url: str, heartbeat_timeout: timedelta) -> dict[str, float]:
    options: dict[str, float] = {"visibility_timeout": visibility_timeout(heartbeat_timeout)}
    if broker_url.startswith(("redis:", "rediss:")):
        options["socket_connect_timeout"] = BROKER_CONNECT_TIMEOUT
        options["socket_timeout"] = BROKER_SOCKET_TIMEOUT
    return options


def make_celery(archive: Archive) -> Any:
    """A Celery app for the archive's ``[tasks]`` settings, with every site's queue."""
    tasks = archive.config.tasks
    app = Celery("safekeeper", broker=tasks.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=_queues(all_sites(archive.config)),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=False,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=tasks.threads,
        worker_send_task_events=False,
        worker_hijack_root_logger=True,
        broker_transport_options=_transport_options(tasks.broker_url, tasks.heartbeat_timeout),
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        enable_utc=True,
    )
    app.task(name=TASK_NAME, ignore_result=True, acks_late=True)(_run)
    return app


def _producer(archive: Archive) -> Any:
    with _producers_lock:
        app = _producers.get(archive)
        if app is None:
            app = _producers[archive] = make_celery(archive)
        return app


def send_tasks(archive: Archive, items: Iterable[tuple[int, str]]) -> None:
    """Send each ``(task id, site)`` to that site's queue.

    Raises BrokerUnavailable when the broker cannot be reached; the task rows exist
    regardless, and a running ``safekeeper worker`` re-sends due tasks.
    """
    _send(archive, list(items))


def _send(archive: Archive, messages: Sequence[tuple[int | list[int], str]]) -> None:
    if not messages:
        return
    app = _producer(archive)
    try:
        with app.producer_or_acquire() as producer:
            for ids, site in messages:
                app.send_task(TASK_NAME, args=(ids,), queue=queue_name(site), producer=producer)
    except OperationalError as exc:
        url = maybe_sanitize_url(archive.config.tasks.broker_url)
        count = sum(len(ids) if isinstance(ids, list) else 1 for ids, _site in messages)
        raise BrokerUnavailable(
            f"cannot reach the task broker at {url}: {_one_line(exc)}; the {count} "
            "tasks are recorded and a running `safekeeper worker` will pick them up"
        ) from exc


def send_batches(archive: Archive, items: Iterable[tuple[int, str]]) -> None:
    """Send the ``(task id, site)`` pairs to their sites' queues as lists of ids, one
    message per batch: a worker thread claims, syncs and records a batch at once, so
    per-task costs (a message, a claim, a commit, a sync) are paid per batch. Each
    site's tasks are spread over at least ``tasks.threads`` messages (while there are
    that many), so one worker's threads all have work. Raises like ``send_tasks``."""
    sent = batches(items, archive.config.tasks.threads)
    _send(archive, [(ids if len(ids) > 1 else ids[0], site) for ids, site in sent])


def batches(items: Iterable[tuple[int, str]], threads: int) -> list[tuple[list[int], str]]:
    """The ``(task ids, site)`` messages for ``send_batches``: per site, in order, at
    most ``MESSAGE_BATCH`` ids each, in at least ``threads`` messages while a site has
    that many tasks."""
    by_site: dict[str, list[int]] = {}
    for task_id, site in items:
        by_site.setdefault(site, []).append(task_id)
    messages: list[tuple[list[int], str]] = []
    for site, ids in by_site.items():
        size = max(1, min(MESSAGE_BATCH, -(-len(ids) // threads)))
        messages += [(ids[start : start + size], site) for start in range(0, len(ids), size)]
    return messages


class _Consumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, reconnecting to the broker at most ``RECONNECT_MAX_SECONDS``
    apart, so that work resumes within seconds of the broker coming back."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=0.5,
            interval_step=0.5,
            interval_max=RECONNECT_MAX_SECONDS,
        )
        return super().ensure_connected(conn)


def _on_connect_step(callback: Callable[[], None]) -> type:
    """A consumer boot step calling ``callback`` each time the consumer has (re)connected
    to the broker and consumes again."""

    class Connected(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, parent: Any) -> None:
            callback()

    return Connected


def _stop_waiting(**_kwargs: Any) -> None:
    outage.stopping.set()


def check_broker(archive: Archive) -> None:
    """Raise BrokerUnavailable unless the broker accepts a connection: waiting for
    workers through a broker that is down would wait forever."""
    app = _producer(archive)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
    except OperationalError as exc:
        url = maybe_sanitize_url(archive.config.tasks.broker_url)
        raise BrokerUnavailable(
            f"cannot reach the task broker at {url}: {_one_line(exc)}; nothing can be sent "
            "to the workers"
        ) from exc


def _one_line(exc: BaseException) -> str:
    """The error's message on one line (the CLI prints exactly one ``error:`` line)."""
    return " ".join(str(exc).split())


def start_worker(
    archive: Archive,
    sites: Sequence[str],
    *,
    on_start: Callable[[], None] | None = None,
    on_connect: Callable[[], None] | None = None,
    loglevel: str = "INFO",
) -> int:
    """Consume the sites' queues in this process until a shutdown signal; return the
    worker's exit code.

    Blocks, in the main thread: Celery installs the SIGTERM and SIGINT handlers (the
    first signal lets running tasks finish, and ends waits for the database). ``on_start``
    runs once the app is set up and logging configured, just before consuming starts;
    ``on_connect`` each time the worker has (re)connected to the broker.
    """
    global _worker_archive
    _worker_archive = archive
    app = make_celery(archive)
    with _producers_lock:
        _producers[archive] = app  # the worker's own re-sends share its connections
    if on_connect is not None:
        app.steps["consumer"].add(_on_connect_step(on_connect))
    signals.worker_shutting_down.connect(_stop_waiting, weak=False)
    worker = app.Worker(
        consumer_cls=_Consumer,
        hostname=f"safekeeper-{'+'.join(sites)}-{os.getpid()}@{socket.gethostname()}",
        queues=[queue_name(site) for site in sites],
        pool_cls="threads",
        concurrency=archive.config.tasks.threads,
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        quiet=True,
    )
    for name in CELERY_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if on_start is not None:
        on_start()
    worker.start()
    return int(worker.exitcode or 0)

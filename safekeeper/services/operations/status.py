"""Operator status: each location's usage against its watermarks, and the task queue."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from sqlalchemy import func, select

from safekeeper.config import Config
from safekeeper.db.models import AuditEntry, Blob, Copy, CopyState, Location, Task, TaskState
from safekeeper.engine.watchdog import STALLED_PREFIX
from safekeeper.errors import SafekeeperError
from safekeeper.policy import watermark_bytes
from safekeeper.services.copies.inventory import LocationStatus, location_report
from safekeeper.services.operations.tasks import TaskView, list_tasks

if TYPE_CHECKING:
    from safekeeper.archive import Archive


# Also the body of GET /api/locations: the descriptions document its OpenAPI schema.
@dataclass(frozen=True)
class LocationUsage(LocationStatus):
    """A location's recorded copies, its watermarks and its replication backlog."""

    capacity: int | None
    high_watermark: Annotated[int | None, Field(description="bytes; gc frees space above this")]
    low_watermark: Annotated[int | None, Field(description="bytes; gc frees space down to this")]
    backlog_copies: Annotated[int, Field(description="copies wanted here, not yet transferred")]
    backlog_bytes: int


def location_usage(archive: Archive) -> list[LocationUsage]:
    with archive.db.read() as session:
        backlog = {
            name: (int(count), int(size))
            for name, count, size in session.execute(
                select(Location.name, func.count(), func.coalesce(func.sum(Blob.size), 0))
                .join(Copy, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.state == CopyState.PENDING)
                .group_by(Location.name)
            )
        }
    usages = []
    for status in location_report(archive):
        settings = archive.config.locations.get(status.name)
        capacity = settings.capacity if settings is not None else None
        high = watermark_bytes(settings.high_watermark, capacity) if settings else None
        low = watermark_bytes(settings.low_watermark, capacity) if settings else None
        count, size = backlog.get(status.name, (0, 0))
        usages.append(
            LocationUsage(
                **asdict(status),
                capacity=capacity,
                high_watermark=high,
                low_watermark=low,
                backlog_copies=count,
                backlog_bytes=size,
            )
        )
    return usages


@dataclass(frozen=True)
class ReplicationStatus:
    queued: int
    running: int
    failed: int
    done: int
    cancelled: int
    #: The most recent failed tasks (out of retries), newest first.
    failed_tasks: list[TaskView]


def replication_status(archive: Archive, failed_limit: int = 100) -> ReplicationStatus:
    with archive.db.read() as session:
        counts = {
            state: int(n)
            for state, n in session.execute(select(Task.state, func.count()).group_by(Task.state))
        }
    return ReplicationStatus(
        queued=int(counts.get(TaskState.QUEUED, 0)),
        running=int(counts.get(TaskState.RUNNING, 0)),
        failed=int(counts.get(TaskState.FAILED, 0)),
        done=int(counts.get(TaskState.DONE, 0)),
        cancelled=int(counts.get(TaskState.CANCELLED, 0)),
        failed_tasks=list_tasks(archive, failed_only=True, limit=failed_limit),
    )


@dataclass(frozen=True)
class SiteQueue:
    """One site's task queue, for ``safekeeper status``, the dashboard and /metrics."""

    site: str
    queued: int
    running: int
    failed: int
    #: Seconds the oldest queued task that is due has waited (0 when none waits).
    oldest_queued_age: float
    #: Seconds since the stalest running task's last heartbeat (0 when none runs).
    stalest_heartbeat_age: float
    #: Tasks (not done) whose last attempt the watchdog gave up: a worker thread got
    #: stuck on them (``tasks.stall_timeout``).
    stalled: int = 0


def site_queues(archive: Archive) -> list[SiteQueue]:
    now = archive.clock()
    with archive.db.read() as session:
        counts: dict[tuple[str, str], int] = {
            (site, state): int(n)
            for site, state, n in session.execute(
                select(Task.site, Task.state, func.count())
                .where(Task.state != TaskState.DONE)
                .group_by(Task.site, Task.state)
            )
        }
        oldest_due = dict(
            session.execute(
                select(Task.site, func.min(Task.not_before))
                .where(Task.state == TaskState.QUEUED, Task.not_before <= now)
                .group_by(Task.site)
            ).all()
        )
        stalest_beat = dict(
            session.execute(
                select(Task.site, func.min(Task.heartbeat_at))
                .where(Task.state == TaskState.RUNNING)
                .group_by(Task.site)
            ).all()
        )
        stalled = dict(
            session.execute(
                select(Task.site, func.count())
                .where(
                    Task.state != TaskState.DONE,
                    Task.last_error.startswith(STALLED_PREFIX, autoescape=True),
                )
                .group_by(Task.site)
            ).all()
        )
    sites = sorted({site for site, _state in counts} | set(archive.config.sites))

    def age(moment: datetime | None) -> float:
        return max((now - moment).total_seconds(), 0.0) if moment is not None else 0.0

    return [
        SiteQueue(
            site=site,
            queued=counts.get((site, TaskState.QUEUED), 0),
            running=counts.get((site, TaskState.RUNNING), 0),
            failed=counts.get((site, TaskState.FAILED), 0),
            oldest_queued_age=age(oldest_due.get(site)),
            stalest_heartbeat_age=age(stalest_beat.get(site)),
            stalled=int(stalled.get(site, 0)),
        )
        for site in sites
    ]


def copy_totals(archive: Archive) -> list[tuple[str, str, int, int]]:
    """(location, state, copies, bytes) for every location and copy state in use."""
    with archive.db.read() as session:
        return [
            (location, state, int(count), int(size))
            for location, state, count, size in session.execute(
                select(
                    Location.name, Copy.state, func.count(), func.coalesce(func.sum(Blob.size), 0)
                )
                .join(Copy, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.state != CopyState.DELETED)  # deleted rows are the audit trail
                .group_by(Location.name, Copy.state)
            )
        ]


#: Task states that end a task; their counts only grow (task rows are kept), so
#: Prometheus' ``rate()`` over them is throughput (done) and error rate (failed).
FINISHED_STATES = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)

#: Audit actions that record a copy's bytes removed by gc (``delete-recovered``: a
#: deletion an interrupted run had already made, recorded by the next one).
DELETION_ACTIONS = ("delete", "delete-recovered")


def finished_tasks(archive: Archive) -> list[tuple[str, str, int]]:
    """(kind, state, tasks) for every kind and finished state in use."""
    with archive.db.read() as session:
        return [
            (kind, state, int(count))
            for kind, state, count in session.execute(
                select(Task.kind, Task.state, func.count())
                .where(Task.state.in_(FINISHED_STATES))
                .group_by(Task.kind, Task.state)
            )
        ]


def deletions_by_location(archive: Archive) -> list[tuple[str, int]]:
    """(location, copies deleted) from the audit log: the audit trail is append-only,
    so the count never goes down."""
    with archive.db.read() as session:
        return [
            (location, int(count))
            for location, count in session.execute(
                select(AuditEntry.location, func.count())
                .where(AuditEntry.action.in_(DELETION_ACTIONS))
                .group_by(AuditEntry.location)
            )
            if location is not None
        ]


# -- processes, stores, and the whole picture (``safekeeper status``) ------------------

#: Seconds between two reports of a running worker; three missed reports make it stale.
REPORT_SECONDS = 10.0
#: A process whose last report is older than this is stale: dead, wedged, or cut off.
STALE_AFTER_SECONDS = 3 * REPORT_SECONDS


def config_fingerprint(config: Config) -> str:
    """A short hash of everything in the configuration that decides where work goes:
    two processes with different fingerprints disagree about locations or policy.
    The ``[server]`` section is left out: it is the listener's (``serve --port``
    changes it), and workers do not read it."""
    document = config.model_dump(mode="json", exclude={"source", "data_dir", "server"})
    canonical = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def report_alive(archive: Archive, name: str, role: str, sites: Sequence[str]) -> None:
    """Record that this process runs, with its sites and configuration."""
    from safekeeper import __version__
    from safekeeper.db import workers

    now = archive.clock()
    with archive.db.write() as session:
        workers.report(
            session,
            name,
            role=role,
            sites=sites,
            fingerprint=config_fingerprint(archive.config),
            version=__version__,
            now=now,
        )
        workers.forget_older_than(session, now - timedelta(days=1))


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    role: str
    sites: list[str]
    config_fingerprint: str
    #: False when it runs another configuration than the process asking.
    same_config: bool
    version: str
    heartbeat_age: float
    #: No report for three intervals: dead, wedged, or cut off from the database.
    stale: bool


@dataclass(frozen=True)
class StoreHealth:
    location: str
    kind: str
    ok: bool
    detail: str
    free_bytes: int | None


@dataclass(frozen=True)
class RunningTask:
    id: int
    kind: str
    site: str
    claimed_by: str | None
    attempts: int
    #: Seconds since the task was queued.
    age: float
    #: Seconds since its worker's last heartbeat for it.
    heartbeat_age: float


#: Running tasks listed by ``system_status`` (the longest-running first).
RUNNING_LIMIT = 100


@dataclass(frozen=True)
class SystemStatus:
    config_fingerprint: str
    workers: list[WorkerStatus]
    queues: list[SiteQueue]
    stores: list[StoreHealth]
    running: list[RunningTask]

    @property
    def healthy(self) -> bool:
        return (
            all(store.ok for store in self.stores)
            and not any(worker.stale for worker in self.workers)
            and not any(queue.failed or queue.stalled for queue in self.queues)
        )


def _store_health(archive: Archive, name: str) -> StoreHealth:
    settings = archive.config.locations[name]
    try:
        store = archive.store(name)
        # One round trip: reachable, and (file:) the root is there. The key is one the
        # location's layout accepts (an interval store takes blob serials, not hashes).
        store.exists(archive.key_for(name, "0" * 64, 1))
    except SafekeeperError as exc:
        return StoreHealth(name, settings.kind, False, str(exc), None)
    root = getattr(store, "root", None)
    free = shutil.disk_usage(root).free if isinstance(root, Path) and root.exists() else None
    return StoreHealth(name, settings.kind, True, "reachable", free)


def system_status(archive: Archive) -> SystemStatus:
    from safekeeper.db import workers

    mine = config_fingerprint(archive.config)
    now = archive.clock()
    with archive.db.read() as session:
        rows = workers.all_workers(session)
    processes = [
        WorkerStatus(
            name=row.name,
            role=row.role,
            sites=[site for site in row.sites.split(",") if site],
            config_fingerprint=row.config_fingerprint,
            same_config=row.config_fingerprint == mine,
            version=row.version,
            heartbeat_age=max((now - row.heartbeat_at).total_seconds(), 0.0),
            stale=(now - row.heartbeat_at).total_seconds() > STALE_AFTER_SECONDS,
        )
        for row in rows
    ]
    stores = [_store_health(archive, name) for name in sorted(archive.config.locations)]
    return SystemStatus(mine, processes, site_queues(archive), stores, running_tasks(archive))


def running_tasks(archive: Archive, limit: int = RUNNING_LIMIT) -> list[RunningTask]:
    now = archive.clock()

    def since(moment: datetime | None) -> float:
        return max((now - moment).total_seconds(), 0.0) if moment is not None else 0.0

    with archive.db.read() as session:
        rows = session.scalars(
            select(Task)
            .where(Task.state == TaskState.RUNNING)
            .order_by(Task.created_at, Task.id)
            .limit(limit)
        ).all()
        return [
            RunningTask(
                task.id,
                task.kind,
                task.site,
                task.claimed_by,
                task.attempts,
                since(task.created_at),
                since(task.heartbeat_at),
            )
            for task in rows
        ]

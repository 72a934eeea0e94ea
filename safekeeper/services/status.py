"""Operator status: each location's usage against its watermarks, and the task queue."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from sqlalchemy import func, select

from safekeeper.db.models import Blob, Copy, CopyState, Location, Task, TaskState
from safekeeper.policy import watermark_bytes
from safekeeper.services.inventory import LocationStatus, location_report
from safekeeper.services.tasks import TaskView, list_tasks

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

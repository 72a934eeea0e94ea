"""Health and Prometheus metrics: ``/api/health/live``, ``/api/health/ready`` (and
``/api/health``, the same as ready) and ``/metrics``.

Liveness answers while the process serves requests; readiness also needs the catalog
database (a load balancer stops sending traffic when it is down, instead of every route
answering 500). Metrics are read from the catalog at scrape time — the database is the
truth for copies and tasks, so any server (or a worker's ``--metrics-port``) reports the
same numbers. They are counts only, never names of blobs or references.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from safekeeper.api.auth import require_operator
from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of
from safekeeper.services.operations.status import SystemStatus

OperatorDep = Annotated[Principal, Depends(require_operator)]

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from safekeeper.archive import Archive

router = APIRouter(tags=["meta"])


def database_ready(archive: Archive) -> str | None:
    """None when the catalog answers; else why not."""
    try:
        with archive.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return str(exc).splitlines()[0]
    return None


@router.get("/api/health/live")
def live() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/api/health/ready", responses={503: {"description": "the database is unreachable"}})
@router.get("/api/health", responses={503: {"description": "the database is unreachable"}})
def ready(request: Request) -> Response:
    """Readiness: the process answers and its catalog database does too."""
    problem = database_ready(archive_of(request))
    if problem is not None:
        return JSONResponse(
            {"code": "database_unavailable", "detail": problem, "status": "unavailable"},
            status_code=503,
        )
    return JSONResponse({"status": "ok"})


class CatalogCollector:
    """Gauges read from the catalog on every scrape."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from safekeeper.services.operations.status import (
            copy_totals,
            deletions_by_location,
            finished_tasks,
            site_queues,
        )

        up = GaugeMetricFamily("safekeeper_database_up", "1 when the catalog database answers")
        problem = database_ready(self.archive)
        up.add_metric([], 0 if problem else 1)
        yield up
        if problem:
            return
        copies = GaugeMetricFamily(
            "safekeeper_copies",
            "copies by location and state; verify findings are the states missing and corrupt",
            labels=["location", "state"],
        )
        size = GaugeMetricFamily(
            "safekeeper_copy_bytes",
            "bytes of the copies by location and state",
            labels=["location", "state"],
        )
        for location, state, count, total in copy_totals(self.archive):
            copies.add_metric([location, state], count)
            size.add_metric([location, state], total)
        yield copies
        yield size
        tasks = GaugeMetricFamily(
            "safekeeper_tasks", "tasks by site and state", labels=["site", "state"]
        )
        waiting = GaugeMetricFamily(
            "safekeeper_oldest_queued_task_age_seconds",
            "how long the oldest due task of a site has waited",
            labels=["site"],
        )
        heartbeat = GaugeMetricFamily(
            "safekeeper_stalest_heartbeat_age_seconds",
            "seconds since the stalest running task of a site last beat (a wedged worker grows it)",
            labels=["site"],
        )
        stalled = GaugeMetricFamily(
            "safekeeper_stalled_tasks",
            "tasks of a site whose last attempt made no progress for tasks.stall_timeout",
            labels=["site"],
        )
        for queue in site_queues(self.archive):
            for state, count in (
                ("queued", queue.queued),
                ("running", queue.running),
                ("failed", queue.failed),
            ):
                tasks.add_metric([queue.site, state], count)
            waiting.add_metric([queue.site], queue.oldest_queued_age)
            heartbeat.add_metric([queue.site], queue.stalest_heartbeat_age)
            stalled.add_metric([queue.site], queue.stalled)
        yield tasks
        yield waiting
        yield heartbeat
        yield stalled
        finished = CounterMetricFamily(
            "safekeeper_tasks_finished",
            "tasks that ended, by kind (transfer, verify, delete, gc) and state"
            " (done, failed, cancelled); rate() of done is throughput, of failed the error rate",
            labels=["kind", "state"],
        )
        for kind, state, count in finished_tasks(self.archive):
            finished.add_metric([kind, state], count)
        yield finished
        deletions = CounterMetricFamily(
            "safekeeper_deletions",
            "copies gc deleted, by location (from the audit log)",
            labels=["location"],
        )
        for location, count in deletions_by_location(self.archive):
            deletions.add_metric([location], count)
        yield deletions


def render_metrics(archive: Archive) -> tuple[bytes, str]:
    """The exposition text of the catalog gauges and this process's own metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(CatalogCollector(archive))
    return generate_latest(registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(archive: Archive, host: str, port: int) -> None:
    """Serve the catalog gauges and this process's own metrics on ``host:port`` from a
    daemon thread (``safekeeper worker --metrics-port``). Registered in the process's
    default registry: a worker process has no other ``/metrics``."""
    from prometheus_client import REGISTRY, start_http_server

    start_http_server(port, addr=host)
    REGISTRY.register(CatalogCollector(archive))


@router.get("/api/status")
def system_status(request: Request, _operator: OperatorDep) -> SystemStatus:
    """Workers with their heartbeat and configuration, queues per site, store health
    (operators and admins)."""
    from safekeeper.services.operations.status import system_status as gather

    return gather(archive_of(request))


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    body, content_type = render_metrics(archive_of(request))
    return Response(body, media_type=content_type)

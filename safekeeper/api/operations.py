"""Operator routes: locations, replication, the deletion plan, gc runs and the audit log.

These are storage-wide views for operators and admins (a member gets 403); cancelling
tasks is for admins only. They show
blob ids, locations and rules, never namespaces or keys; explaining one blob's
verdicts still needs a blob the caller can see (404 otherwise).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from safekeeper.api.auth import require_admin, require_operator
from safekeeper.api.principal import Principal
from safekeeper.api.schemas import ApiModel, error_responses
from safekeeper.api.state import archive_of, gc_runner_of
from safekeeper.engine.gc_runs import GcRun
from safekeeper.engine.gc_runs import progress as gc_progress
from safekeeper.errors import BadInput, NotFound
from safekeeper.ids import check_name, parse_blob_id
from safekeeper.services.access import tenant_data
from safekeeper.services.deletion import planner
from safekeeper.services.operations import audit, status, tasks

router = APIRouter(prefix="/api", tags=["operations"])

OperatorDep = Annotated[Principal, Depends(require_operator)]
AdminDep = Annotated[Principal, Depends(require_admin)]
LocationQuery = Annotated[str | None, Query(description="only this location")]


class RetryOut(ApiModel):
    requeued: list[int]


class CancelOut(ApiModel):
    cancelled: list[int] = Field(description="were queued: they never run")
    stopping: list[int] = Field(
        description="were running: their workers stop at the next heartbeat, recording nothing"
    )
    left_running: list[int] = Field(description="running gc batches, not stopped half-way")


class DeletionOut(ApiModel):
    blob: str
    location: str
    size: int
    rule: str
    reason: str


class KeptOut(ApiModel):
    copies: int
    bytes: int


class LocationPlanOut(ApiModel):
    location: str
    kind: str
    used_bytes: int
    high_watermark: int | None
    low_watermark: int | None
    deletion_count: int
    bytes_freed: int
    deletions: list[DeletionOut] = Field(description="the first `limit` planned deletions")
    kept: dict[str, KeptOut] = Field(description="copies kept, per rule")


class PlanOut(ApiModel):
    at: datetime
    locations: list[LocationPlanOut]


class VerdictOut(ApiModel):
    location: str
    state: str
    allowed: bool
    rule: str
    reason: str


class BatchFailureOut(ApiModel):
    task_id: int
    location: str
    error: str


class GcRunOut(ApiModel):
    id: int = Field(description="the run's id, for GET /api/gc/{id}")
    actor: str
    location: str | None
    started_at: datetime
    finished_at: datetime | None
    running: bool
    phase: str = Field(description="others, archives (archive copies go last) or ended")
    planned: int = Field(description="copies the plan allowed to delete when the run began")
    batches: dict[str, int] = Field(description="the run's gc tasks by state")
    processed: int = Field(description="copies in batches that have ended")
    deleted: int = Field(description="of those, copies now deleted")
    bytes_freed: int
    trees_dropped: int = Field(description="extracted package trees whose zip is gone")
    failures: list[BatchFailureOut] = Field(description="batches that failed for good")
    error: str | None = Field(description="why the run stopped early, if it did")


def _run_out(request: Request, run: GcRun) -> GcRunOut:
    return GcRunOut.model_validate(gc_progress(archive_of(request), run), from_attributes=True)


def _location(archive_locations: dict[str, Any], name: str | None) -> str | None:
    if name is None:
        return None
    check_name("location", name)
    if name not in archive_locations:
        raise BadInput(f"no location named {name!r}")
    return name


@router.get(
    "/locations", response_model=list[status.LocationUsage], responses=error_responses(401, 403)
)
def list_locations(request: Request, _operator: OperatorDep) -> list[status.LocationUsage]:
    """Each location: objects and bytes recorded, watermarks, replication backlog."""
    return status.location_usage(archive_of(request))


@router.get(
    "/replication",
    response_model=status.ReplicationStatus,
    responses=error_responses(401, 403),
)
def replication(
    request: Request,
    _operator: OperatorDep,
    failed_limit: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> status.ReplicationStatus:
    """Task counts by state and the failed tasks (out of retries), newest first."""
    return status.replication_status(archive_of(request), failed_limit)


@router.post(
    "/tasks/{task_id}/retry",
    response_model=RetryOut,
    responses=error_responses(401, 403, 404),
)
def retry_task(
    request: Request,
    _operator: OperatorDep,
    task_id: Annotated[int, Path(ge=1, le=2**62)],
) -> RetryOut:
    """Queue a failed or cancelled task again (404 unless it exists and is one)."""
    return RetryOut(requeued=tasks.retry_failed(archive_of(request), [task_id]))


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=CancelOut,
    responses=error_responses(401, 403, 404, 409),
)
def cancel_task(
    request: Request,
    admin: AdminDep,
    task_id: Annotated[int, Path(ge=1, le=2**62)],
) -> CancelOut:
    """Cancel a queued or running task (404 unknown; 409 ended, or a running gc batch)."""
    result = tasks.cancel_tasks(archive_of(request), [task_id], actor=f"api:{admin.user_name}")
    return CancelOut.model_validate(result, from_attributes=True)


@router.post(
    "/tasks/cancel",
    response_model=CancelOut,
    responses=error_responses(400, 401, 403, 404),
)
def cancel_location_tasks(
    request: Request,
    admin: AdminDep,
    location: Annotated[str, Query(max_length=200, description="the tasks' location")],
) -> CancelOut:
    """Cancel every queued or running task whose copy is at ``location`` (running gc
    batches are left to end by themselves)."""
    archive = archive_of(request)
    result = tasks.cancel_tasks(
        archive,
        location=_location(archive.config.locations, location),
        actor=f"api:{admin.user_name}",
    )
    return CancelOut.model_validate(result, from_attributes=True)


@router.get("/plan", response_model=PlanOut, responses=error_responses(400, 401, 403))
def plan(
    request: Request,
    _operator: OperatorDep,
    location: LocationQuery = None,
    limit: Annotated[int, Query(ge=0, le=100_000, description="deletions per location")] = 1000,
) -> PlanOut:
    """Dry run: what gc would delete now and what it keeps, per location and rule."""
    archive = archive_of(request)
    result = planner.make_plan(archive, _location(archive.config.locations, location))
    return PlanOut(
        at=result.at,
        locations=[
            LocationPlanOut(
                location=p.location,
                kind=p.kind,
                used_bytes=p.used_bytes,
                high_watermark=p.high_watermark,
                low_watermark=p.low_watermark,
                deletion_count=len(p.deletions),
                bytes_freed=p.bytes_freed,
                deletions=[DeletionOut.model_validate(d) for d in p.deletions[:limit]],
                kept={rule: KeptOut(copies=n, bytes=b) for rule, (n, b) in p.kept.items()},
            )
            for p in result.locations
        ],
    )


@router.get(
    "/plan/explain/{blob}",
    response_model=list[VerdictOut],
    responses=error_responses(400, 401, 403, 404),
)
def explain(request: Request, operator: OperatorDep, blob: str) -> list[VerdictOut]:
    """Each live copy of one blob with the policy's verdict on it, and why."""
    archive = archive_of(request)
    sha256 = parse_blob_id(blob)
    with archive.db.read() as session:
        tenant_data.visible_blob(session, operator, sha256)
    return [
        VerdictOut(
            location=e.location,
            state=e.state,
            allowed=e.decision.allowed,
            rule=str(e.decision.rule),
            reason=e.decision.reason,
        )
        for e in planner.explain(archive, sha256)
    ]


@router.post(
    "/gc", status_code=202, response_model=GcRunOut, responses=error_responses(400, 401, 403)
)
def start_gc(
    request: Request,
    operator: OperatorDep,
    location: LocationQuery = None,
    max_batches: Annotated[
        int | None, Query(ge=1, le=10_000, description="stop after this many batches")
    ] = None,
) -> GcRunOut:
    """Start gc: exactly what the plan allows is deleted, audited, by the executor
    (Celery: the sites' workers; embedded: this server's executor), archive copies
    after the others. Answers at once with the run (or the run already going: one at
    a time); follow it with GET /api/gc/{id}."""
    archive = archive_of(request)
    run = gc_runner_of(request).start(
        actor=f"api:{operator.user_name}",
        location=_location(archive.config.locations, location),
        max_batches=max_batches,
    )
    return _run_out(request, run)


@router.get("/gc", response_model=list[GcRunOut], responses=error_responses(401, 403))
def list_gc_runs(request: Request, _operator: OperatorDep) -> list[GcRunOut]:
    """The recent gc runs of this server process, newest first."""
    return [_run_out(request, run) for run in gc_runner_of(request).recent()]


@router.get("/gc/{run_id}", response_model=GcRunOut, responses=error_responses(401, 403, 404))
def gc_run(
    request: Request, _operator: OperatorDep, run_id: Annotated[int, Path(ge=1, le=2**62)]
) -> GcRunOut:
    """A gc run's progress: batches by state, copies processed and deleted, failures."""
    run = gc_runner_of(request).get(run_id)
    if run is None:
        raise NotFound(f"no gc run {run_id} (runs are forgotten when the server restarts)")
    return _run_out(request, run)


@router.get(
    "/audit", response_model=list[audit.AuditView], responses=error_responses(400, 401, 403)
)
def read_audit(
    request: Request,
    operator: OperatorDep,
    blob: Annotated[str | None, Query(description="a blob's SHA-256")] = None,
    location: Annotated[str | None, Query(max_length=200)] = None,
    rule: Annotated[str | None, Query(max_length=100)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[audit.AuditView]:
    """The deletion log, newest first: who deleted which copy, by which rule, on what
    evidence. Entries naming another tenant's references are left out."""
    archive = archive_of(request)
    entries = audit.read_audit(
        archive,
        blob=parse_blob_id(blob) if blob is not None else None,
        location=location,
        rule=rule,
        since=_aware(since),
        until=_aware(until),
        limit=limit,
    )
    return tenant_data.visible_audit(archive, operator, entries)


def _aware(moment: datetime | None) -> datetime | None:
    """Timestamps without a zone are UTC (the database stores UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)

"""Operator routes: locations, replication, the deletion plan, gc and the audit log.

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
from safekeeper.api.state import archive_of
from safekeeper.errors import BadInput
from safekeeper.ids import check_name, parse_blob_id
from safekeeper.services import audit, gc, planner, status, tasks, tenant_data

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


class GcOut(ApiModel):
    planned: int
    deleted: int
    bytes_freed: int
    kept_on_recheck: int
    failed: int
    recovered: int
    trees_dropped: int = Field(description="extracted package trees whose zip is gone")


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


@router.post("/gc", response_model=GcOut, responses=error_responses(400, 401, 403, 409))
def run_gc(
    request: Request,
    operator: OperatorDep,
    location: LocationQuery = None,
    max_batches: Annotated[
        int | None, Query(ge=1, le=10_000, description="stop after this many batches")
    ] = None,
) -> GcOut:
    """Run gc now, in this request: delete exactly what the plan allows, audited."""
    archive = archive_of(request)
    report = gc.run_gc(
        archive,
        location=_location(archive.config.locations, location),
        actor=f"api:{operator.user_name}",
        max_batches=max_batches,
    )
    return GcOut(
        planned=report.planned,
        deleted=report.deleted,
        bytes_freed=report.bytes_freed,
        kept_on_recheck=len(report.kept_on_recheck),
        failed=len(report.failed),
        recovered=report.recovered,
        trees_dropped=report.trees_dropped,
    )


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

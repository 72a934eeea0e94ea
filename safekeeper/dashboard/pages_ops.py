"""Operator pages: locations, blobs, the deletion plan and gc, failures, audit; and
the system status (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of, gc_runner_of
from safekeeper.archive import Archive
from safekeeper.dashboard.auth import admin, checked_form, operator
from safekeeper.dashboard.web import PageRoute, render, see_other
from safekeeper.engine.gc_runs import GcProgress, progress
from safekeeper.errors import BadInput, NotFound, SafekeeperError
from safekeeper.ids import is_blob_id, parse_blob_id
from safekeeper.services.access.tenant_data import blob_info, resolve_visible_blob, visible_audit
from safekeeper.services.deletion.planner import explain, make_plan
from safekeeper.services.operations.audit import read_audit
from safekeeper.services.operations.status import location_usage, system_status
from safekeeper.services.operations.tasks import list_tasks, retry_failed
from safekeeper.units import ago

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Operator = Annotated[Principal, Depends(operator)]
Admin = Annotated[Principal, Depends(admin)]
#: Ids in page URLs stay within the database's 64-bit integers (larger ones are 422).
RowId = Annotated[int, Path(ge=1, le=2**62)]


def _runs(request: Request) -> list[GcProgress]:
    archive = archive_of(request)
    return [progress(archive, run) for run in gc_runner_of(request).recent()]


def _run(request: Request, run_id: int) -> GcProgress:
    run = gc_runner_of(request).get(run_id)
    if run is None:
        raise NotFound(f"no gc run {run_id} (runs are forgotten when the server restarts)")
    return progress(archive_of(request), run)


@router.get("/status")
def status_page(request: Request, _: Admin) -> Response:
    """What ``safekeeper status`` and ``GET /api/status`` show: workers, queues per
    site, running tasks, store health."""
    return render(request, "status.html", {"report": system_status(archive_of(request))})


@router.get("/locations")
def locations_page(request: Request, _: Operator) -> Response:
    return render(request, "locations.html", {"rows": location_usage(archive_of(request))})


@router.get("/blobs")
def blobs_page(request: Request, principal: Operator, q: str = "") -> Response:
    """Search by id prefix or reference; one match goes straight to its page."""
    if not q.strip():
        return render(request, "blobs.html", {"q": q})
    try:
        sha256 = _find_blob(request, principal, q.strip())
    except (BadInput, NotFound) as exc:
        return render(request, "blobs.html", {"q": q, "problem": str(exc)}, status_code=404)
    return see_other(f"/blobs/{sha256}")


def _find_blob(request: Request, principal: Principal, text: str) -> str:
    return resolve_visible_blob(archive_of(request), principal, text, storage=True)


@router.get("/blobs/{sha256}")
def blob_page(request: Request, sha256: str, principal: Operator) -> Response:
    """What the API's blob info answers (the same visibility rule): a blob another
    tenant references is a 404 here as there; references and holds only as far as the
    principal's tenant reaches."""
    archive = archive_of(request)
    info = blob_info(archive, principal, parse_blob_id(sha256))
    verdicts = {e.location: e.decision for e in explain(archive, info.sha256)}
    return render(
        request,
        "blob.html",
        {"blob": info, "references": info.references, "holds": info.holds, "verdicts": verdicts},
    )


@router.get("/plan")
def plan_page(request: Request, principal: Operator, explain_blob: str = "") -> Response:
    archive = archive_of(request)
    explained = None
    problem = None
    if explain_blob.strip():
        try:
            sha256 = resolve_visible_blob(archive, principal, explain_blob, storage=True)
            explained = (sha256, explain(archive, sha256))
        except SafekeeperError as exc:
            problem = str(exc)
    return render(
        request,
        "plan.html",
        {
            "plan": make_plan(archive),
            "explain_blob": explain_blob,
            "explained": explained,
            "problem": problem,
            "runs": _runs(request),
        },
    )


@router.post("/plan/run")
def run_gc_page(
    request: Request, principal: Operator, _csrf: Annotated[None, Depends(checked_form)]
) -> Response:
    """Start gc the way ``POST /api/gc`` does: through the executor, in the background."""
    run = gc_runner_of(request).start(actor=f"dashboard:{principal.user_name}")
    return see_other(f"/plan/runs/{run.id}")


@router.get("/plan/runs/{run_id}")
def gc_run_page(request: Request, run_id: RowId, _: Operator) -> Response:
    return render(request, "gc_run.html", {"run": _run(request, run_id)})


@router.get("/plan/runs/{run_id}/progress")
def gc_run_progress(request: Request, run_id: RowId, _: Operator) -> Response:
    run = _run(request, run_id)
    body = {
        "id": run.id,
        "running": run.running,
        "phase": run.phase,
        "planned": run.planned,
        "processed": run.processed,
        "deleted": run.deleted,
        "bytes_freed": run.bytes_freed,
        "percent": run.percent,
        "batches": run.batches,
        "failed": len(run.failures),
        "error": run.error,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/failures")
def failures_page(request: Request, _: Operator, retried: str = "") -> Response:
    failed = list_tasks(archive_of(request), failed_only=True)
    runs = [run for run in _runs(request) if run.error]
    return render(request, "failures.html", {"tasks": failed, "runs": runs, "retried": retried})


@router.post("/failures/{task_id}/retry")
def retry_page(
    request: Request,
    task_id: RowId,
    _: Operator,
    _csrf: Annotated[None, Depends(checked_form)],
) -> Response:
    retry_failed(archive_of(request), [task_id])
    return see_other("/failures", retried=str(task_id))


@router.post("/failures/retry-all")
def retry_all_page(
    request: Request, _: Operator, _csrf: Annotated[None, Depends(checked_form)]
) -> Response:
    requeued = retry_failed(archive_of(request))
    return see_other("/failures", retried=",".join(map(str, requeued)) or "none")


def _since(text: str, now: datetime) -> datetime | None:
    """``7d`` (that long ago) or an ISO date/time; empty: no bound."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return ago(now, text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=now.tzinfo)


def _audit_blob(archive: Archive, principal: Principal, text: str) -> str | None:
    """The blob to filter the audit by. A full id is taken as is: the entries shown
    are the visible ones either way, so it reveals nothing; a prefix or a reference
    resolves only among the blobs the principal may see."""
    text = text.strip().lower() if is_blob_id(text.strip().lower()) else text.strip()
    if not text:
        return None
    if is_blob_id(text):
        return text
    return resolve_visible_blob(archive, principal, text, storage=True)


@router.get("/audit")
def audit_page(
    request: Request,
    principal: Operator,
    blob: str = "",
    location: str = "",
    rule: str = "",
    since: str = "",
) -> Response:
    archive = archive_of(request)
    filters = {"blob": blob, "location": location, "rule": rule, "since": since}
    try:
        entries = read_audit(
            archive,
            blob=_audit_blob(archive, principal, blob),
            location=location.strip() or None,
            rule=rule.strip() or None,
            since=_since(since, archive.clock()),
            limit=500,
        )
        entries = visible_audit(archive, principal, entries)
        problem = None
    except SafekeeperError as exc:
        entries, problem = [], str(exc)
    return render(
        request,
        "audit.html",
        {
            "entries": entries,
            "filters": filters,
            "problem": problem,
            "locations": sorted(archive.config.locations),
        },
        status_code=400 if problem else 200,
    )

"""``plan``, ``gc``, ``audit``, ``hold``/``release``/``holds``, ``jobs``: safe deletion."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.text import Text

from safekeeper.archive import Archive
from safekeeper.cli.context import person, state
from safekeeper.cli.output import console, emit_json, err_console, plural, table, when
from safekeeper.engine.dispatch import dispatch
from safekeeper.engine.wait import wait_for_tasks
from safekeeper.errors import BadInput
from safekeeper.packages.eviction import EvictedTree, drop_orphaned_trees
from safekeeper.services.copies import inventory
from safekeeper.services.deletion import gc, holds, jobs, planner
from safekeeper.services.operations import audit
from safekeeper.units import ago, format_size

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LocationOption = Annotated[str | None, typer.Option(help="Only this location.")]


def plan(
    ctx: typer.Context,
    location: LocationOption = None,
    explain: Annotated[
        str | None, typer.Option(metavar="BLOB", help="Explain every copy of one blob.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Dry run: what gc would delete (rule, reason, bytes) and what it keeps, and why."""
    archive = state(ctx).archive()
    if explain is not None:
        explanations = planner.explain(archive, explain)
        if location is not None:
            explanations = [e for e in explanations if e.location == location]
        if as_json:
            emit_json(explanations)
            return
        table(
            None,
            ["location", "state", "verdict", "rule", "reason"],
            [
                (
                    e.location,
                    e.state,
                    "delete" if e.decision.allowed else "keep",
                    e.decision.rule,
                    e.decision.reason,
                )
                for e in explanations
            ],
        )
        return
    result = planner.make_plan(archive, location)
    if as_json:
        emit_json(result)
        return
    for loc in result.locations:
        marks = ""
        if loc.high_watermark is not None:
            marks = (
                f", watermarks {format_size(loc.high_watermark)}/"
                f"{format_size(loc.low_watermark or 0)}"
            )
        console.print(
            f"[bold]{loc.location}[/] ({loc.kind}, {format_size(loc.used_bytes)} used{marks}): "
            f"delete {plural(len(loc.deletions), 'copy', 'copies')}, "
            f"free {format_size(loc.bytes_freed)}"
        )
        by_rule: dict[tuple[str, str], list[int]] = {}
        for deletion in loc.deletions:
            entry = by_rule.setdefault((deletion.rule, deletion.reason), [0, 0])
            entry[0] += 1
            entry[1] += deletion.size
        for (rule, reason), (count, size) in sorted(by_rule.items()):
            console.print(f"  delete {count:>8} ({format_size(size):>10})  {rule}: {reason}")
        for rule, (count, size) in sorted(loc.kept.items()):
            console.print(f"  keep   {count:>8} ({format_size(size):>10})  {rule}")


def gc_command(
    ctx: typer.Context,
    location: LocationOption = None,
    actor: Annotated[str | None, typer.Option(help="Who to record in the audit log.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Celery: wait for the sites' workers to finish.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete what the plan allows: claim, re-check, delete, record (with audit).

    Embedded executor: runs here. Celery: each batch goes to its location's site queue;
    with --wait, archive copies are queued once every other batch has ended.
    """
    archive = state(ctx).archive()
    _collect_derived_garbage(archive)
    if archive.config.tasks.executor == "celery":
        _gc_on_workers(archive, location, actor, wait, as_json)
        return
    report = gc.run_gc(archive, location=location, actor=actor)
    if as_json:
        emit_json(report)
    else:
        console.print(
            f"planned {report.planned}, deleted {report.deleted} "
            f"({format_size(report.bytes_freed)}), kept on re-check "
            f"{len(report.kept_on_recheck)}, failed {len(report.failed)}"
            + (f", recovered {report.recovered} from an interrupted gc" if report.recovered else "")
            + (
                f", {report.claims_lost} claims lost (to a gc that recovered them, a hold or a job)"
                if report.claims_lost
                else ""
            )
            + (
                f", {plural(report.trees_dropped, 'extracted package tree')}"
                if report.trees_dropped
                else ""
            )
        )
        for blob, loc, rule, reason in report.kept_on_recheck:
            console.print(f"kept     {blob} at {loc}: {rule}: {reason}")
        for blob, loc, error in report.failed:
            console.print(f"failed   {blob} at {loc}: {error}")
    for error in report.refused.values():
        err_console.print(Text.assemble(("error: ", "bold red"), error))
    if report.failed or report.refused:
        raise typer.Exit(1)


def _collect_derived_garbage(archive: Archive) -> None:
    """Expired sign-in sessions and extracted package trees above the cache's high
    watermark go first (on stderr, so ``--json`` output stays gc's report)."""
    from safekeeper.packages.eviction import evict
    from safekeeper.services.access.sessions import purge_expired

    purged = purge_expired(archive)
    if purged:
        err_console.print(f"removed {plural(purged, 'expired sign-in session')}")
    _report_trees(evict(archive, archive.clock()))


def _report_trees(evicted: Sequence[EvictedTree]) -> None:
    if evicted:
        size = format_size(sum(tree.size for tree in evicted))
        trees = plural(len(evicted), "extracted package tree")
        err_console.print(f"evicted {trees} ({size}) from the cache")


def _gc_on_workers(
    archive: Archive, location: str | None, actor: str | None, wait: bool, as_json: bool
) -> None:
    from safekeeper.services.deletion.gc_queue import queue_gc

    planned, task_ids = queue_gc(archive, archives=False, location=location, actor=actor)
    dispatch(archive, task_ids)
    outcome: dict[str, int] = {}
    if wait:
        outcome = wait_for_tasks(archive, task_ids)
        _, archive_ids = queue_gc(archive, archives=True, location=location, actor=actor)
        dispatch(archive, archive_ids)
        for state_name, count in wait_for_tasks(archive, archive_ids).items():
            outcome[state_name] = outcome.get(state_name, 0) + count
        task_ids += archive_ids
    # The cache is this host's: trees whose zip the workers deleted the last copy of go
    # here (run_gc does it in the embedded mode; without --wait, the next gc does).
    _report_trees(drop_orphaned_trees(archive, archive.clock()))
    summary = {"planned": planned, "batches": len(task_ids), "tasks": outcome}
    if as_json:
        emit_json(summary)
    else:
        console.print(
            f"planned {planned}; {len(task_ids)} batches sent to the sites' workers"
            + (
                ": " + ", ".join(f"{n} {s}" for s, n in sorted(outcome.items()))
                if outcome
                else " (archive copies go once these have ended)"
            )
        )
    if outcome.get("failed"):
        raise typer.Exit(1)


def audit_command(
    ctx: typer.Context,
    blob: Annotated[str | None, typer.Option(help="Only this blob (id or unique prefix).")] = None,
    location: LocationOption = None,
    rule: Annotated[str | None, typer.Option(help="Only deletions by this rule.")] = None,
    since: Annotated[
        str | None, typer.Option(help="ISO time (2026-01-31T00:00) or an age such as 7d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Read the audit log of deletions."""
    archive = state(ctx).archive()
    sha256 = inventory.resolve_blob(archive, blob) if blob else None
    entries = audit.read_audit(
        archive,
        blob=sha256,
        location=location,
        rule=rule,
        since=_since(since, archive.clock()),
        limit=limit,
    )
    if as_json:
        emit_json(entries)
        return
    table(
        None,
        ["at", "action", "blob", "location", "rule", "reason", "actor"],
        [
            (when(e.at), e.action, (e.blob or "")[:16], e.location, e.rule, e.reason, e.actor)
            for e in entries
        ],
    )


def _since(text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            return ago(now, text)
        except BadInput as exc:
            hint = "give an ISO time or an age such as 7d"
            raise BadInput(f"--since {text!r}: {hint} ({exc})") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def hold(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="BLOB|NAMESPACE")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the hold).")],
    actor: Annotated[
        str | None, typer.Option(help="Who places the hold (default: you, as user@host).")
    ] = None,
) -> None:
    """Forbid deleting any copy of a blob, or of any blob a namespace references."""
    view = holds.add_hold(state(ctx).archive(), target, reason, actor or person())
    console.print(f"hold {view.id} on {view.kind} {view.target}")


def release(
    ctx: typer.Context, target: Annotated[str, typer.Argument(metavar="BLOB|NAMESPACE")]
) -> None:
    """Release the holds on a blob or namespace."""
    count = holds.release_holds(state(ctx).archive(), target)
    console.print(f"released {plural(count, 'hold')}")


def holds_list(
    ctx: typer.Context,
    released: Annotated[bool, typer.Option("--all", help="Include released holds.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List holds."""
    views = holds.list_holds(state(ctx).archive(), include_released=released)
    if as_json:
        emit_json(views)
        return
    table(
        None,
        ["id", "kind", "target", "reason", "by", "since", "released"],
        [
            (
                v.id,
                v.kind,
                v.target,
                v.reason,
                v.created_by,
                when(v.created_at),
                when(v.released_at),
            )
            for v in views
        ],
    )


jobs_app = typer.Typer(help="Staging jobs: blobs needed at a processing location.")


@jobs_app.command("start")
def jobs_start(
    ctx: typer.Context,
    name: str,
    location: Annotated[str, typer.Option(help="The processing location.")],
    blobs: Annotated[list[str], typer.Argument(help="Blob ids (or prefixes) or references.")],
) -> None:
    """Start a job: transfer its blobs to the processing location and keep them there."""
    archive = state(ctx).archive()
    view = jobs.start_job(archive, name, location, blobs)
    if archive.config.tasks.executor != "celery" and view.task_ids:
        from safekeeper.engine.embedded import run_due

        run_due(archive)
    console.print(
        f"job {view.name} started: {plural(view.blobs, 'blob')} at {view.location}, "
        f"{plural(len(view.task_ids), 'transfer')}"
    )


@jobs_app.command("end")
def jobs_end(ctx: typer.Context, name: str) -> None:
    """End a job: its copies become deletable when no active job needs them."""
    view = jobs.end_job(state(ctx).archive(), name)
    console.print(f"job {view.name} ended")


@jobs_app.command("ls")
def jobs_ls(
    ctx: typer.Context,
    ended: Annotated[bool, typer.Option("--all", help="Include ended jobs.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List staging jobs."""
    views = jobs.list_jobs(state(ctx).archive(), include_ended=ended)
    if as_json:
        emit_json(views)
        return
    table(
        None,
        ["id", "name", "location", "blobs", "started", "ended"],
        [(v.id, v.name, v.location, v.blobs, when(v.created_at), when(v.ended_at)) for v in views],
    )

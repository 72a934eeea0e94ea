"""``replicate``, ``verify``, ``tasks``: copies where policy wants them, proven intact."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import byte_progress, console, emit_json, plural, table, when
from safekeeper.engine.dispatch import check_broker, dispatch
from safekeeper.engine.embedded import run_due
from safekeeper.engine.wait import task_states, wait_for_tasks
from safekeeper.services.copies import replication
from safekeeper.services.copies import verify as verify_service
from safekeeper.services.operations import tasks as task_service
from safekeeper.units import parse_duration

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def replicate(
    ctx: typer.Context,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until no task this pass found or made at the locations it writes to "
            "is queued or running.",
        ),
    ] = False,
    no_worker_timeout: Annotated[
        str,
        typer.Option(
            help="With --wait (Celery): give up, exit 1, when a site with waiting tasks has "
            "had no live worker (no report for 30 s) for this long, e.g. 60s.",
        ),
    ] = "60s",
    timeout: Annotated[
        str | None,
        typer.Option(
            help="With --wait (Celery): give up, exit 1, after this long in all, e.g. 2h."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Schedule transfers for every blob whose replication policy is not met.

    Embedded executor: the due tasks run here before the command returns. Celery: they
    go to the sites' queues; --wait waits for the workers. Either way the counts are of
    every task queued or running, when the pass ended, at the locations it writes to
    (replicate_to targets, archives, its transfers' targets): its own and earlier ones.
    Exits 1 when one of them failed, or when --wait gave up (no live worker for a site
    with waiting tasks, or --timeout): the tasks stay queued.
    """
    no_worker_seconds = parse_duration(no_worker_timeout).total_seconds()
    timeout_seconds = parse_duration(timeout).total_seconds() if timeout is not None else None
    archive = state(ctx).archive()
    result = replication.replication_pass(archive)
    work = replication.outstanding(archive, result)
    celery = archive.config.tasks.executor == "celery"
    outcome: dict[str, int] = {}
    if celery:
        dispatch(archive, result.task_ids)
        if wait and not result.task_ids:
            check_broker(archive)  # the earlier tasks' workers need the broker too
    if not as_json:
        console.print(
            f"{plural(result.wanted, 'copy', 'copies')} wanted, "
            f"{plural(result.scheduled, 'transfer')} scheduled"
        )
        if work.task_ids and (wait or not celery):
            console.print(
                f"{'waiting for' if wait else 'running'} {plural(len(work.task_ids), 'task')} "
                f"at {', '.join(work.locations)}: {result.scheduled} scheduled now, "
                f"{work.earlier} earlier"
            )
    if celery:
        if wait:
            outcome = wait_for_tasks(
                archive,
                work.task_ids,
                no_worker_seconds=no_worker_seconds,
                timeout_seconds=timeout_seconds,
            )
    else:
        run_due(archive, wait=wait)
        # Where these tasks ended (a retried task counts once, in its last state), not
        # how often tasks ran: the counts add up to the tasks named above.
        outcome = task_states(archive, work.task_ids)
    if as_json:
        emit_json(
            {
                "wanted": result.wanted,
                "scheduled": result.scheduled,
                "earlier": work.earlier,
                "locations": work.locations,
                "tasks": outcome,
            }
        )
    elif outcome:
        console.print("tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(outcome.items())))
    if outcome.get("failed"):
        if not as_json:
            console.print("see `safekeeper tasks --failed`; retry with `safekeeper tasks retry`")
        raise typer.Exit(1)


def verify(
    ctx: typer.Context,
    location: Annotated[str | None, typer.Option(help="Only this location.")] = None,
    sample: Annotated[
        float | None, typer.Option(help="Check a random fraction of the copies (0-1].")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Only copies last verified longer ago, e.g. 30d.")
    ] = None,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="Record orphan objects whose bytes hash to their key's blob (never on "
            "name or size alone); report the others.",
        ),
    ] = False,
    stale_uploads_after: Annotated[
        str,
        typer.Option(
            help="Abort incomplete S3 multipart uploads started longer ago than this "
            "(leftovers of killed writers), e.g. 24h.",
        ),
    ] = "24h",
    as_json: JsonFlag = False,
) -> None:
    """Re-hash copies; mark missing/corrupt ones and schedule repairs; report orphans.

    Never deletes an object (it aborts stale incomplete uploads, which hold none). Exits 1 when a copy is missing or corrupt with no good copy left to repair it from, or could not be checked ("unrepairable" and "errors" in --json say which).
    """  # noqa: E501
    archive = state(ctx).archive()
    age = parse_duration(older_than) if older_than is not None else None
    stale_after = parse_duration(stale_uploads_after)
    with byte_progress(enabled=not as_json) as progress:
        task = progress.add_task("verifying", total=None)
        report = verify_service.verify(
            archive,
            location=location,
            sample=sample,
            older_than=age,
            adopt=adopt,
            stale_uploads_after=stale_after,
            on_checked=lambda size: progress.advance(task, size),
        )
    if archive.config.tasks.executor != "celery" and report.repairs_scheduled:
        run_due(archive)
    if as_json:
        emit_json(report)
    else:
        _print_verify(report)
    if report.unrepairable or report.errors:
        raise typer.Exit(1)


def _print_verify(report: verify_service.VerifyReport) -> None:
    console.print(
        f"checked {report.checked}: {report.ok} ok, {len(report.missing)} missing, "
        f"{len(report.corrupt)} corrupt; {report.repairs_scheduled} repairs scheduled"
    )
    for line in report.missing:
        console.print(f"missing  {line}")
    for line in report.corrupt:
        console.print(f"corrupt  {line}")
    for line in report.restored:
        console.print(f"restored {line} (its bytes are back and hash right)")
    for line in report.unrepairable:
        console.print(f"no good copy left to repair from: {line}")
    for line in report.errors:
        console.print(f"not checked: {line}")
    for orphan in report.orphans:
        console.print(
            f"orphan   {orphan.location}/{orphan.key} ({orphan.size} bytes): {orphan.outcome}"
        )
    if report.stale_uploads:
        total = sum(upload.size for upload in report.stale_uploads)
        console.print(
            f"aborted {plural(len(report.stale_uploads), 'stale incomplete upload')} "
            f"({total} bytes)"
        )
    for upload in report.stale_uploads:
        console.print(
            f"aborted  {upload.location}/{upload.key} ({upload.size} bytes, "
            f"started {upload.initiated:%Y-%m-%d %H:%M:%S})"
        )


tasks_app = typer.Typer(help="The task queue: list, retry failed tasks, cancel tasks.")


@tasks_app.callback(invoke_without_command=True)
def tasks_list(
    ctx: typer.Context,
    failed: Annotated[bool, typer.Option("--failed", help="Only failed tasks.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
    as_json: JsonFlag = False,
) -> None:
    """List tasks (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    views = task_service.list_tasks(state(ctx).archive(), failed_only=failed, limit=limit)
    if as_json:
        emit_json(views)
        return
    rows = [
        (
            v.id,
            v.kind,
            v.state,
            v.site,
            v.blob[:16],
            v.location,
            v.attempts,
            when(v.finished_at),
            v.last_error or "",
        )
        for v in views
    ]
    table(
        None,
        ["id", "kind", "state", "site", "blob", "location", "attempts", "ended", "error"],
        rows,
    )
    if failed and views:
        console.print("retry with: safekeeper tasks retry --all  (or: tasks retry ID…)")


@tasks_app.command("retry")
def tasks_retry(
    ctx: typer.Context,
    task_ids: Annotated[list[int] | None, typer.Argument(help="Task ids to retry.")] = None,
    all_failed: Annotated[bool, typer.Option("--all", help="Retry every failed task.")] = False,
) -> None:
    """Queue failed (or, by id, cancelled) tasks again with a fresh attempt budget (and run
    them, embedded)."""
    if not task_ids and not all_failed:
        raise typer.BadParameter("give task ids or --all")
    archive = state(ctx).archive()
    requeued = task_service.retry_failed(archive, None if all_failed else task_ids)
    console.print(f"requeued {len(requeued)} tasks")
    if archive.config.tasks.executor != "celery" and requeued:
        outcome = run_due(archive)
        console.print("tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(outcome.items())))
        if outcome.get("failed"):
            raise typer.Exit(1)


@tasks_app.command("cancel")
def tasks_cancel(
    ctx: typer.Context,
    task_ids: Annotated[list[int] | None, typer.Argument(help="Task ids to cancel.")] = None,
    location: Annotated[
        str | None,
        typer.Option(help="Cancel every queued or running task whose copy is at this location."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel queued or running tasks: a queued one never runs, a running one stops at its
    worker's next heartbeat and records nothing.

    A cancelled transfer's copy is marked failed, so replication leaves it alone until
    `safekeeper tasks retry ID`. A running gc batch is not stopped half-way.
    """
    if not task_ids and location is None:
        raise typer.BadParameter("give task ids or --location")
    if task_ids and location is not None:
        raise typer.BadParameter("give task ids or --location, not both")
    result = task_service.cancel_tasks(
        state(ctx).archive(),
        task_ids or None,
        location=location,
        actor=f"cli:{os.environ.get('USER', 'unknown')}",
    )
    if as_json:
        emit_json(result)
        return
    console.print(
        f"cancelled {plural(len(result.cancelled), 'queued task')}{_ids(result.cancelled)}"
    )
    if result.stopping:
        console.print(
            f"stopping {plural(len(result.stopping), 'running task')}{_ids(result.stopping)}: "
            "their workers stop at the next heartbeat and record nothing"
        )
    if result.left_running:
        console.print(
            f"left running {plural(len(result.left_running), 'gc batch', 'gc batches')}"
            f"{_ids(result.left_running)}: a batch is not stopped half-way"
        )


def _ids(task_ids: list[int]) -> str:
    return f" ({', '.join(map(str, task_ids))})" if task_ids else ""

"""``safekeeper status``: is the system healthy, and what is waiting."""

from __future__ import annotations

from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import console, emit_json, table
from safekeeper.units import format_size

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def status(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Workers (heartbeat, sites, configuration), queues per site, running tasks, stores.
    Exits 1 when something needs attention: a stale worker, failed tasks, tasks whose
    worker thread got stuck ("stalled"), a store that cannot be reached."""
    from safekeeper.services.operations.status import system_status

    report = system_status(state(ctx).archive())
    if json_output:
        emit_json({**_as_dict(report), "healthy": report.healthy})
    else:
        console.print(f"configuration {report.config_fingerprint}")
        table(
            "workers",
            ["name", "role", "sites", "heartbeat", "config", "state"],
            [
                (
                    w.name,
                    w.role,
                    ", ".join(w.sites),
                    f"{_age(w.heartbeat_age)} ago",
                    w.config_fingerprint + ("" if w.same_config else " (differs)"),
                    "stale" if w.stale else "ok",
                )
                for w in report.workers
            ]
            or [("(none has reported)", "", "", "", "", "")],
        )
        table(
            "queues",
            [
                "site",
                "queued",
                "oldest waiting",
                "running",
                "stalest heartbeat",
                "stalled",
                "failed",
            ],
            [
                (
                    q.site,
                    q.queued,
                    _age(q.oldest_queued_age) if q.queued else "-",
                    q.running,
                    _age(q.stalest_heartbeat_age) if q.running else "-",
                    q.stalled,
                    q.failed,
                )
                for q in report.queues
            ],
        )
        table(
            "running tasks",
            ["task", "kind", "site", "worker", "attempt", "queued", "heartbeat"],
            [
                (
                    t.id,
                    t.kind,
                    t.site,
                    t.claimed_by or "-",
                    t.attempts,
                    f"{_age(t.age)} ago",
                    f"{_age(t.heartbeat_age)} ago",
                )
                for t in report.running
            ]
            or [("(none)", "", "", "", "", "", "")],
        )
        table(
            "stores",
            ["location", "kind", "state", "free"],
            [
                (
                    s.location,
                    s.kind,
                    "ok" if s.ok else f"error: {s.detail}",
                    format_size(s.free_bytes) if s.free_bytes is not None else "-",
                )
                for s in report.stores
            ],
        )
        console.print("healthy" if report.healthy else "needs attention")
    if not report.healthy:
        raise typer.Exit(1)


def _as_dict(report: object) -> dict[str, object]:
    import dataclasses

    return dataclasses.asdict(report)  # type: ignore[call-overload, no-any-return]

"""gc started from the dashboard: one run at a time in a background thread, with the
progress the plan page polls.

Runs live in the server process's memory only; the audit log is the durable record of
what a run deleted.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime

from safekeeper.archive import Archive
from safekeeper.errors import SafekeeperError
from safekeeper.services.gc import run_gc
from safekeeper.services.planner import make_plan


@dataclass
class GcRun:
    id: int
    actor: str
    started_at: datetime
    planned: int
    processed: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    kept_on_recheck: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.finished_at is None

    @property
    def percent(self) -> int:
        if not self.running:
            return 100
        return int(100 * self.processed / self.planned) if self.planned else 0

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "running": self.running,
            "planned": self.planned,
            "processed": self.processed,
            "deleted": self.deleted,
            "bytes_freed": self.bytes_freed,
            "percent": self.percent,
            "failed": len(self.failed),
            "kept_on_recheck": len(self.kept_on_recheck),
            "error": None if self.running else self.error,
        }


class GcRunner:
    """Starts gc runs and remembers them (the last few) for their progress pages."""

    KEEP = 20

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._lock = threading.Lock()
        self._runs: dict[int, GcRun] = {}
        self._ids = itertools.count(1)

    def get(self, run_id: int) -> GcRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def recent(self) -> list[GcRun]:
        with self._lock:
            return sorted(self._runs.values(), key=lambda run: run.id, reverse=True)

    def start(self, actor: str) -> GcRun:
        """A new run, or the one already running (two gcs at once would only race)."""
        with self._lock:
            for run in self._runs.values():
                if run.running:
                    return run
            planned = len(make_plan(self._archive).deletions)
            run = GcRun(next(self._ids), actor, self._archive.clock(), planned)
            self._runs[run.id] = run
            for old in sorted(self._runs)[: -self.KEEP]:
                del self._runs[old]
        threading.Thread(target=self._run, args=(run,), name=f"gc-{run.id}", daemon=True).start()
        return run

    def _run(self, run: GcRun) -> None:
        def on_batch(count: int) -> None:
            run.processed += count

        # Until the run returns, an ending is unexpected (the traceback goes to the log).
        run.error = "gc stopped unexpectedly; see the server log"
        try:
            report = run_gc(self._archive, actor=run.actor, on_batch=on_batch)
            run.deleted = report.deleted
            run.bytes_freed = report.bytes_freed
            run.kept_on_recheck = report.kept_on_recheck
            run.failed = report.failed
            run.error = None
        except SafekeeperError as exc:
            run.error = str(exc)
        finally:
            run.finished_at = self._archive.clock()

"""gc started by the server (``POST /api/gc``, the dashboard's button), run by the
configured executor exactly as ``safekeeper gc --wait`` runs it.

The batches are ``gc`` tasks (``services.deletion.gc_queue.queue_gc``). Celery: they go
to the sites' queues and the sites' workers delete, so the server needs no access to the
stores. Embedded: this process's embedded executor runs them. A coordinating thread per run
queues the archive copies once every other batch has ended, then drops the extracted
package trees whose zip is gone (the package cache is the server's).

Progress is read from the rows: the batches' task states, and how many of their
copies are ``deleted`` now. Runs are remembered by the server process that started
them (the last few); the task rows and the audit log are the durable record.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from safekeeper.db.models import Blob, Copy, CopyState, Task, TaskState
from safekeeper.engine.dispatch import dispatch
from safekeeper.engine.runner import run_batch, worker_name
from safekeeper.engine.wait import ENDED
from safekeeper.errors import SafekeeperError
from safekeeper.packages.eviction import drop_orphaned_trees
from safekeeper.services.deletion.gc_queue import queue_gc

if TYPE_CHECKING:
    from safekeeper.archive import Archive

log = logging.getLogger(__name__)

#: Seconds between two looks at a run's tasks.
POLL_SECONDS = 0.25
_CHUNK = 500


@dataclass
class GcRun:
    """One gc run: who started it, and the ``gc`` tasks queued for it so far."""

    id: int
    actor: str
    location: str | None
    started_at: datetime
    planned: int
    task_ids: list[int]
    max_batches: int | None = None
    #: True once the archive copies' batches are queued (the second phase).
    archives_queued: bool = False
    trees_dropped: int = 0
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.finished_at is None


@dataclass(frozen=True)
class BatchFailure:
    task_id: int
    location: str
    error: str


@dataclass(frozen=True)
class GcProgress:
    """A run as the rows show it now."""

    id: int
    actor: str
    location: str | None
    started_at: datetime
    finished_at: datetime | None
    running: bool
    #: ``others``: non-archive batches; ``archives``: archive copies; ``ended``.
    phase: str
    planned: int
    #: Batches by task state (queued, running, done, failed).
    batches: dict[str, int]
    #: Copies of ended batches (processed), and those of them now deleted.
    processed: int
    deleted: int
    bytes_freed: int
    trees_dropped: int
    failures: list[BatchFailure] = field(default_factory=list)
    error: str | None = None

    @property
    def percent(self) -> int:
        if not self.running:
            return 100
        return min(99, int(100 * self.processed / self.planned)) if self.planned else 0


def progress(archive: Archive, run: GcRun) -> GcProgress:
    running = run.running
    phase = "ended" if not running else ("archives" if run.archives_queued else "others")
    states: Counter[str] = Counter()
    processed: list[int] = []
    failures: list[BatchFailure] = []
    deleted = freed = 0
    with archive.db.read() as session:
        for start in range(0, len(run.task_ids), _CHUNK):
            chunk = run.task_ids[start : start + _CHUNK]
            for task_id, state, payload, error in session.execute(
                select(Task.id, Task.state, Task.payload, Task.last_error).where(Task.id.in_(chunk))
            ):
                states[str(state)] += 1
                arguments = json.loads(payload or "{}")
                if state in ENDED:
                    processed += arguments.get("copy_ids", [])
                if state == TaskState.FAILED:
                    failures.append(BatchFailure(task_id, arguments["location"], error or ""))
        for start in range(0, len(processed), _CHUNK):
            count, size = session.execute(
                select(func.count(), func.coalesce(func.sum(Blob.size), 0))
                .select_from(Copy)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(
                    Copy.id.in_(processed[start : start + _CHUNK]),
                    Copy.state == CopyState.DELETED,
                )
            ).one()
            deleted, freed = deleted + int(count), freed + int(size)
    return GcProgress(
        id=run.id,
        actor=run.actor,
        location=run.location,
        started_at=run.started_at,
        finished_at=run.finished_at,
        running=running,
        phase=phase,
        planned=run.planned,
        batches={s.value: states.get(s.value, 0) for s in TaskState},
        processed=len(processed),
        deleted=deleted,
        bytes_freed=freed,
        trees_dropped=run.trees_dropped,
        failures=failures,
        error=None if running else run.error,
    )


class GcRunner:
    """Starts gc runs (one at a time) and remembers the last few for their progress."""

    KEEP = 20

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._runs: dict[int, GcRun] = {}
        self._ids = itertools.count(1)

    def get(self, run_id: int) -> GcRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def recent(self) -> list[GcRun]:
        with self._lock:
            return sorted(self._runs.values(), key=lambda run: run.id, reverse=True)

    def start(
        self, actor: str, location: str | None = None, max_batches: int | None = None
    ) -> GcRun:
        """Queue the first phase's batches and start the run's thread; or return the
        run already going (two gcs at once would only race for the same copies)."""
        # Starts are serialized on their own lock, so reading progress does not wait
        # for a plan to be made.
        with self._start_lock:
            with self._lock:
                going = [run for run in self._runs.values() if run.running]
            if going:
                return going[0]
            planned, task_ids = queue_gc(
                self._archive,
                archives=False,
                location=location,
                actor=actor,
                max_batches=max_batches,
            )
            run = GcRun(
                next(self._ids),
                actor,
                location,
                self._archive.clock(),
                planned,
                task_ids,
                max_batches,
            )
            with self._lock:
                self._runs[run.id] = run
                for old in sorted(self._runs)[: -self.KEEP]:
                    del self._runs[old]
        threading.Thread(target=self._drive, args=(run,), name=f"gc-{run.id}", daemon=True).start()
        return run

    def _drive(self, run: GcRun) -> None:
        archive = self._archive
        # Until the run returns, an ending is unexpected (the traceback goes to the log).
        run.error = "gc stopped unexpectedly; see the server log"
        try:
            dispatch(archive, run.task_ids)
            self._wait(list(run.task_ids))
            budget = None if run.max_batches is None else run.max_batches - len(run.task_ids)
            if budget is None or budget > 0:
                _, archive_ids = queue_gc(
                    archive,
                    archives=True,
                    location=run.location,
                    actor=run.actor,
                    max_batches=budget,
                )
                run.task_ids = run.task_ids + archive_ids
                run.archives_queued = True
                dispatch(archive, archive_ids)
                self._wait(archive_ids)
            # Trees whose zip the batches deleted the last copy of (the cache is ours).
            run.trees_dropped = len(drop_orphaned_trees(archive, archive.clock()))
            run.error = None
        except SafekeeperError as exc:
            run.error = str(exc)
        except Exception:
            log.exception("gc run %d", run.id)
        finally:
            run.finished_at = archive.clock()

    def _wait(self, task_ids: Sequence[int]) -> None:
        """Until every task has ended. Embedded: run them here as they come due
        (retries after their backoff); celery: the sites' workers run them."""
        archive = self._archive
        embedded = archive.config.tasks.executor != "celery"
        worker = worker_name()
        with ThreadPoolExecutor(max_workers=archive.config.tasks.threads) as pool:
            while True:
                live = _live(archive, task_ids)
                if not live:
                    return
                if embedded:
                    run_batch(archive, live, worker, pool)
                time.sleep(POLL_SECONDS)


def _live(archive: Archive, task_ids: Sequence[int]) -> list[int]:
    """Those of ``task_ids`` that have not ended."""
    live: list[int] = []
    with archive.db.read() as session:
        for start in range(0, len(task_ids), _CHUNK):
            chunk = task_ids[start : start + _CHUNK]
            live += session.scalars(
                select(Task.id).where(Task.id.in_(chunk), Task.state.not_in(list(ENDED)))
            )
    return live

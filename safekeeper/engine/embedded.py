"""The embedded executor: runs due tasks on a thread pool in this process."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from safekeeper.db import tasks as task_rows
from safekeeper.db.models import TaskState
from safekeeper.engine.runner import reap_dead_tasks, run_batch, worker_name

if TYPE_CHECKING:
    from safekeeper.archive import Archive

#: The longest a waiting loop sleeps before looking at the queue again.
POLL_SECONDS = 1.0
#: Tasks claimed, run and recorded together (one claim, one sync, one commit). A sync
#: flushes the whole filesystem and a commit waits for the disk: with 4 KiB files they
#: cost as much as the transfers of a batch of 256, so batches are as large as one
#: look at the queue (``due_task_ids``) gives.
BATCH_SIZE = 1000


def run_due(
    archive: Archive,
    *,
    sites: Sequence[str] | None = None,
    wait: bool = False,
    on_result: Callable[[TaskState | None], None] | None = None,
) -> Counter[str]:
    """Run every due task (for ``sites``, or all) until none is left.

    With ``wait``, also wait out retry backoffs and tasks running elsewhere until no
    task is queued or running. Returns how many tasks ended in each state.
    """
    timeout = archive.config.tasks.heartbeat_timeout
    tally: Counter[str] = Counter()
    worker = worker_name()

    with ThreadPoolExecutor(max_workers=archive.config.tasks.threads) as pool:
        while True:
            reap_dead_tasks(archive)
            with archive.db.read() as session:
                due = task_rows.due_task_ids(session, archive.clock(), timeout, sites)
            if not due:
                if not wait or not _still_busy(archive, sites):
                    return tally
                time.sleep(_pause(archive, sites))
                continue
            for start in range(0, len(due), BATCH_SIZE):
                states = run_batch(archive, due[start : start + BATCH_SIZE], worker, pool)
                tally["skipped"] += min(BATCH_SIZE, len(due) - start) - len(states)
                for state in states:
                    tally[state.value if state else "skipped"] += 1
                    if on_result is not None:
                        on_result(state)
            if not tally["skipped"]:
                del tally["skipped"]


def _still_busy(archive: Archive, sites: Sequence[str] | None) -> bool:
    with archive.db.read() as session:
        return task_rows.live_count(session, sites) > 0


def _pause(archive: Archive, sites: Sequence[str] | None) -> float:
    with archive.db.read() as session:
        next_due = task_rows.next_due_time(session, sites)
    if next_due is None:
        return POLL_SECONDS
    return min(max((next_due - archive.clock()).total_seconds(), 0.05), POLL_SECONDS)

"""Waiting for tasks that other processes (Celery workers) run.

A wait ends when every task has ended, and gives up (``WaitAbandoned``) rather than
wait forever:

- when a site that still has waiting tasks has had no live worker for
  ``no_worker_seconds`` in a row. A worker is live while its last report in the
  ``workers`` table is fresh (``services.operations.status.STALE_AFTER_SECONDS``), whatever its
  tasks do: a long transfer on a live worker is waited for;
- after ``timeout_seconds`` in all, when the caller gives one.

Either way the tasks stay queued: a worker that starts later runs them.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db import workers
from safekeeper.db.models import Task, TaskState
from safekeeper.errors import SafekeeperError
from safekeeper.services.operations.status import STALE_AFTER_SECONDS

if TYPE_CHECKING:
    from safekeeper.archive import Archive

ENDED = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)
#: The roles of processes that run a site's tasks (``engine.worker``'s reporters).
WORKER_ROLES = ("celery-worker", "worker")
#: Default for ``no_worker_seconds``: a worker that is starting reports within seconds
#: of its start-up replication pass; one that restarts under systemd, about as fast.
NO_WORKER_SECONDS = 60.0
#: Task ids named per site in a message; the rest are counted.
IDS_SHOWN = 10


class WaitAbandoned(SafekeeperError):
    """Waiting for tasks was given up: no worker serves their site, or the time ran out.
    The tasks themselves are untouched (still queued or running)."""

    code = "wait_abandoned"


def wait_for_tasks(
    archive: Archive,
    task_ids: Sequence[int],
    poll_seconds: float = 0.5,
    *,
    no_worker_seconds: float = NO_WORKER_SECONDS,
    timeout_seconds: float | None = None,
) -> dict[str, int]:
    """Block until every task has ended; return how many ended in each state.

    Raises ``WaitAbandoned`` when a site with waiting tasks has had no live worker for
    ``no_worker_seconds``, or after ``timeout_seconds``."""
    started = time.monotonic()
    unserved_since: dict[str, float] = {}  # site -> when this wait first saw it unserved
    while True:
        waiting = _waiting_by_site(archive, task_ids)
        if not waiting:
            return task_states(archive, task_ids)
        now = time.monotonic()
        if timeout_seconds is not None and now - started >= timeout_seconds:
            raise WaitAbandoned(
                f"gave up after {timeout_seconds:g} s: {_describe(waiting)} not ended yet "
                "(they go on without this command)"
            )
        beats = _latest_beats(archive)
        live_after = archive.clock() - timedelta(seconds=STALE_AFTER_SECONDS)
        for site in list(unserved_since):
            if site not in waiting or (site in beats and beats[site] >= live_after):
                del unserved_since[site]
        for site in waiting:
            if site not in beats or beats[site] < live_after:
                unserved_since.setdefault(site, now)
        abandoned = sorted(
            site for site, since in unserved_since.items() if now - since >= no_worker_seconds
        )
        if abandoned:
            raise WaitAbandoned(
                "; ".join(_no_worker(archive, site, beats.get(site), waiting) for site in abandoned)
            )
        time.sleep(poll_seconds)


def _no_worker(
    archive: Archive, site: str, beat: datetime | None, waiting: dict[str, list[int]]
) -> str:
    if beat is None:
        seen = "none has reported"
    else:
        seen = f"the last report was {(archive.clock() - beat).total_seconds():.0f} s ago"
    return (
        f"no live worker for site {site} ({seen}); {_tasks(waiting[site])} wait there, "
        f"still queued: start `safekeeper worker --site {site}`"
    )


def _describe(waiting: dict[str, list[int]]) -> str:
    return ", ".join(f"{_tasks(ids)} at site {site}" for site, ids in sorted(waiting.items()))


def _tasks(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:IDS_SHOWN]))
    more = f" and {len(ids) - IDS_SHOWN} more" if len(ids) > IDS_SHOWN else ""
    return f"{len(ids)} {'task' if len(ids) == 1 else 'tasks'} ({shown}{more})"


def _latest_beats(archive: Archive) -> dict[str, datetime]:
    with archive.db.read() as session:
        return workers.latest_heartbeat_by_site(session, WORKER_ROLES)


def _waiting_by_site(archive: Archive, task_ids: Sequence[int]) -> dict[str, list[int]]:
    """The ids of the tasks not ended yet, by the site whose workers run them."""
    waiting: defaultdict[str, list[int]] = defaultdict(list)
    with archive.db.read() as session:
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start : start + 500]
            rows = session.execute(
                select(Task.id, Task.site).where(Task.id.in_(chunk), Task.state.not_in(ENDED))
            )
            for task_id, site in rows:
                waiting[site].append(task_id)
    return {site: sorted(ids) for site, ids in waiting.items()}


def task_states(archive: Archive, task_ids: Sequence[int]) -> dict[str, int]:
    """How many of ``task_ids`` are in each state now (the counts add up to the tasks)."""
    states: Counter[str] = Counter()
    with archive.db.read() as session:
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start : start + 500]
            states.update(
                str(state)
                for state in session.scalars(select(Task.state).where(Task.id.in_(chunk)))
            )
    return dict(states)

"""Waiting for tasks that other processes (Celery workers) run."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db.models import Task, TaskState

if TYPE_CHECKING:
    from safekeeper.archive import Archive

ENDED = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


def wait_for_tasks(
    archive: Archive, task_ids: Sequence[int], poll_seconds: float = 0.5
) -> dict[str, int]:
    """Block until every task has ended; return how many ended in each state."""
    while True:
        states = task_states(archive, task_ids)
        if all(state in ENDED for state in states):
            return states
        time.sleep(poll_seconds)


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

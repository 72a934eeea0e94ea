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

ENDED = (TaskState.DONE, TaskState.FAILED)


def wait_for_tasks(
    archive: Archive, task_ids: Sequence[int], poll_seconds: float = 0.5
) -> dict[str, int]:
    """Block until every task has ended; return how many ended in each state."""
    while True:
        with archive.db.read() as session:
            states = Counter(session.scalars(select(Task.state).where(Task.id.in_(task_ids))).all())
        if all(state in ENDED for state in states):
            return dict(states)
        time.sleep(poll_seconds)

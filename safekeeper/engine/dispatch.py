"""Hand newly created tasks to the configured executor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db.models import Task

if TYPE_CHECKING:
    from safekeeper.archive import Archive


def dispatch(archive: Archive, task_ids: Sequence[int]) -> None:
    """Embedded: nothing to do, the in-process runner polls the table. Celery: send
    the task ids to their sites' queues, in batches (``celery_app.send_batches``)."""
    if archive.config.tasks.executor != "celery" or not task_ids:
        return
    from safekeeper.engine.celery_app import send_batches

    with archive.db.read() as session:
        rows = session.execute(select(Task.id, Task.site).where(Task.id.in_(task_ids)))
        sites = {task_id: site for task_id, site in rows}
    send_batches(archive, [(task_id, sites[task_id]) for task_id in task_ids])


def check_broker(archive: Archive) -> None:
    """Celery: raise BrokerUnavailable unless the broker can be reached (before waiting
    on workers that could not be sent anything). Embedded: nothing to check."""
    if archive.config.tasks.executor != "celery":
        return
    from safekeeper.engine.celery_app import check_broker as check

    check(archive)

"""gc as queued tasks (the distributed mode): each planned batch becomes a ``gc`` task
for the site of its location, whose workers alone may reach its store, and the
``GcBatch`` handler runs one batch there with ``services.deletion.gc``'s phases.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from safekeeper.db import claims
from safekeeper.db.tasks import enqueue
from safekeeper.engine.types import Completion, TaskInfo
from safekeeper.errors import TransientStoreError
from safekeeper.services.deletion.gc import (
    GcReport,
    default_actor,
    execute_batch,
    plan_batches,
    recover_stale_claims,
)

if TYPE_CHECKING:
    from safekeeper.archive import Archive


def queue_gc(
    archive: Archive,
    *,
    archives: bool,
    location: str | None = None,
    actor: str | None = None,
    max_batches: int | None = None,
) -> tuple[int, list[int]]:
    """Plan, and queue each batch as a ``gc`` task for the site of its location (the
    distributed mode: only that site's workers can reach its store); the first
    ``max_batches`` batches only, when given.

    Archive copies go last: call once with ``archives=False``, wait for those tasks,
    then once with ``archives=True``. Returns (planned copies, task ids).

    Stale claims are recovered by the sites' workers too (the first call queues one
    recovery task per location that has any): recovering looks in the store, which
    the host queueing the batches may not reach."""
    actor = actor or default_actor()
    task_ids: list[int] = []
    if not archives:
        task_ids += _queue_recovery(archive, location, actor)
    planned, batches = plan_batches(archive, location)
    batches = [
        (name, batch)
        for name, batch in batches
        if (archive.config.locations[name].kind == "archive") == archives
    ][:max_batches]
    with archive.db.write() as session:
        now = archive.clock()
        for name, batch in batches:
            arguments = {"location": name, "copy_ids": batch, "actor": actor}
            task_ids.append(_enqueue(archive, session, batch[0], arguments, now))
    return planned, task_ids


def _queue_recovery(archive: Archive, location: str | None, actor: str) -> list[int]:
    """One ``gc`` task with ``recover`` per configured location holding stale claims."""
    timeout = archive.config.policy.gc_claim_timeout
    task_ids = []
    with archive.db.write() as session:
        now = archive.clock()
        for name, copy_id in sorted(claims.stale_claim_locations(session, now, timeout).items()):
            if name not in archive.config.locations or location not in (None, name):
                continue  # not ours to recover here (recover_stale_claims skips them too)
            arguments = {"location": name, "copy_ids": [], "actor": actor, "recover": True}
            task_ids.append(_enqueue(archive, session, copy_id, arguments, now))
    return task_ids


def _enqueue(
    archive: Archive, session: Session, copy_id: int, arguments: dict[str, Any], now: datetime
) -> int:
    task = enqueue(
        session,
        kind="gc",
        site=archive.config.locations[arguments["location"]].site,
        copy_id=copy_id,
        source_copy_id=None,
        max_attempts=archive.config.policy.max_retries,
        now=now,
    )
    task.payload = json.dumps(arguments)
    return task.id


class GcBatch:
    """The ``gc`` task: phases 1-5 for one planned batch, after recovering the
    location's stale claims when the payload says ``recover``. Idempotent: a repeated run
    finds the copies already claimed or deleted and claims nothing."""

    reports_progress = False  # many small steps, no byte stream: no watchdog

    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        arguments = json.loads(task.payload or "{}")
        report = GcReport()
        if arguments.get("recover"):
            recover_stale_claims(archive, arguments["actor"], report, arguments["location"])
        if arguments["copy_ids"]:
            execute_batch(
                archive, arguments["location"], arguments["copy_ids"], arguments["actor"], report
            )
        if report.failed:
            raise TransientStoreError(f"{len(report.failed)} deletes failed; retried later")
        return lambda session, now: None

    def failed(
        self, session: Session, task: TaskInfo, error: str, final: bool, now: datetime
    ) -> None:
        """Nothing to undo: failed copies went back to ``present`` (retries counted)."""

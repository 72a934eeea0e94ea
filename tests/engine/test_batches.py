"""Transfers run in batches (issue 17): one claim, one read-ahead, one sync and one
set-based record per batch — and still one outcome per task. A blob that fails in a
batch keeps its own error and retry; the others are recorded done; a task whose claim
is lost while its batch runs (cancelled) records nothing, while the rest of the batch
does. On SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.db.models import Blob, Copy, CopyState, Location, Task, TaskState
from safekeeper.engine.celery_app import MESSAGE_BATCH, batches
from safekeeper.engine.handlers import HANDLERS
from safekeeper.engine.runner import run_claimed, worker_name
from safekeeper.engine.types import Completion, TaskInfo
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.copies.transfer import Transfer
from safekeeper.services.operations.tasks import cancel_tasks
from safekeeper.stores.filesystem import FileStore


def _object(archive: Archive, location: str, sha256: str) -> Any:
    store = archive.store(location)
    assert isinstance(store, FileStore)
    return store.root / store.layout.path_for_key(sha256)


def _rows(archive: Archive, task_ids: list[int]) -> dict[int, tuple[str, str, str | None]]:
    """task id → (task state, its copy's state, the task's last error)."""
    with archive.db.read() as session:
        rows = session.execute(
            select(Task.id, Task.state, Copy.state, Task.last_error)
            .join(Copy, Task.copy_id == Copy.id)
            .where(Task.id.in_(task_ids))
        ).all()
    return {t: (ts, cs, error) for t, ts, cs, error in rows}


def _blob_of(archive: Archive, task_id: int) -> str:
    with archive.db.read() as session:
        return session.execute(
            select(Blob.sha256)
            .join(Copy, Copy.blob_id == Blob.id)
            .join(Task, Task.copy_id == Copy.id)
            .where(Task.id == task_id)
        ).scalar_one()


@pytest.mark.parametrize("threads", [None, 3])
def test_a_blob_failing_in_a_batch_keeps_its_own_outcome(
    archive: Archive, threads: int | None
) -> None:
    blobs = [archive.put_bytes(f"blob {i}".encode() * 500).sha256 for i in range(6)]
    task_ids = replication_pass(archive).task_ids
    by_blob = {_blob_of(archive, t): t for t in task_ids}
    lost = by_blob[blobs[2]]
    _object(archive, "inbox", blobs[2]).unlink()  # its only source is gone

    pool = ThreadPoolExecutor(threads) if threads else None
    try:
        states = run_claimed(archive, task_ids, worker_name(), pool)
    finally:
        if pool is not None:
            pool.shutdown()

    assert states == {t: TaskState.QUEUED if t == lost else TaskState.DONE for t in task_ids}
    rows = _rows(archive, task_ids)
    for task_id in task_ids:
        task_state, copy_state, error = rows[task_id]
        if task_id == lost:
            assert (task_state, copy_state) == ("queued", "pending")
            assert error is not None and "object missing" in error
        else:
            assert (task_state, copy_state, error) == ("done", "present", None)
    for sha in blobs:
        assert _object(archive, "archive", sha).exists() == (sha != blobs[2])
    with archive.db.read() as session:
        verified = session.scalars(
            select(Copy.verified_at)
            .join(Location, Copy.location_id == Location.id)
            .where(Location.name == "archive", Copy.state == CopyState.PRESENT)
        ).all()
    assert len(verified) == 5 and all(v is not None for v in verified)


class _CancelsTheFirst:
    """The transfer handler; running the last task of a batch of ``size`` cancels the
    first one, which has run but is not recorded yet."""

    def __init__(self, archive: Archive, size: int) -> None:
        self.real: Transfer = HANDLERS["transfer"]  # type: ignore[assignment]
        self.archive, self.size = archive, size
        self.ran: list[int] = []

    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        if len(self.ran) == self.size - 1:
            cancel_tasks(self.archive, [self.ran[0]], actor="tester")
        self.ran.append(task.id)
        completion: Completion = self.real.execute(archive, task)
        return completion

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_task_cancelled_while_its_batch_runs_records_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        archive.put_bytes(f"blob {i}".encode() * 300)
    task_ids = replication_pass(archive).task_ids
    handler = _CancelsTheFirst(archive, len(task_ids))
    monkeypatch.setitem(HANDLERS, "transfer", handler)

    states = run_claimed(archive, task_ids, worker_name())

    assert sorted(handler.ran) == sorted(task_ids)
    victim = handler.ran[0]
    assert states[victim] is None, "its claim was gone: nothing recorded"
    rows = _rows(archive, task_ids)
    assert rows[victim] == ("cancelled", "failed", "cancelled by tester")
    for task_id in handler.ran[1:]:
        assert states[task_id] == TaskState.DONE
        assert rows[task_id][:2] == ("done", "present")


def test_a_batch_reads_every_target_and_source_ahead(archive: Archive) -> None:
    """What ``prepare`` hands a task equals what the task would read for itself."""
    for i in range(5):
        archive.put_bytes(f"blob {i}".encode() * 100)
    task_ids = replication_pass(archive).task_ids
    with archive.db.read() as session:
        infos = [TaskInfo.of(t) for t in session.scalars(select(Task).where(Task.id.in_(task_ids)))]
    transfer = Transfer()
    prepared = transfer.prepare(archive, infos)
    assert sorted(prepared) == sorted(task_ids)
    for info in infos:
        ahead, own = prepared[info.id], transfer._read_target(archive, info)
        assert (ahead.state, ahead.location, ahead.blob, ahead.sources) == (  # type: ignore[attr-defined]
            own.state,
            own.location,
            own.blob,
            own.sources,
        )


def test_new_work_is_sent_in_batches_that_keep_every_thread_busy() -> None:
    items = [(i, "a") for i in range(10)] + [(100 + i, "b") for i in range(3)]
    sent = batches(items, threads=4)
    # Each site's ids, in order, each once, in at least min(threads, count) messages.
    assert [i for ids, site in sent if site == "a" for i in ids] == list(range(10))
    assert [ids for ids, site in sent if site == "b"] == [[100], [101], [102]]
    assert len([1 for _ids, site in sent if site == "a"]) >= 4
    many = batches([(i, "a") for i in range(10 * MESSAGE_BATCH)], threads=2)
    assert max(len(ids) for ids, _site in many) == MESSAGE_BATCH
    assert sum(len(ids) for ids, _site in many) == 10 * MESSAGE_BATCH

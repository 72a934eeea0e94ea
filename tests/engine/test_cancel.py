"""Cancelling tasks (issue 15), in process on SQLite and PostgreSQL: a cancelled queued
task is never claimed, a running one stops at its worker's next heartbeat and records
nothing, a cancelled transfer's copy is not scheduled again until it is retried; and
``replicate`` counts every outstanding task at the locations it writes to."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from safekeeper.archive import Archive
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Copy, CopyState, Task, TaskState
from safekeeper.engine.runner import run_task
from safekeeper.engine.wait import wait_for_tasks
from safekeeper.errors import BadInput, Conflict, NotFound
from safekeeper.services.copies import replication
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.deletion.gc_queue import queue_gc
from safekeeper.services.operations.tasks import cancel_tasks, list_tasks, retry_failed
from safekeeper.stores.base import Store
from tests.conftest import ArchiveFactory, FakeClock

PIECE = 1024


def _task(archive: Archive, task_id: int) -> Task:
    with archive.db.read() as session:
        return session.get_one(Task, task_id)


def _copy(archive: Archive, task_id: int) -> Copy:
    with archive.db.read() as session:
        return session.get_one(Copy, _task(archive, task_id).copy_id)


def test_a_cancelled_queued_task_never_runs_and_its_copy_waits_for_a_retry(
    archive: Archive,
) -> None:
    archive.put_bytes(b"one" * 100)
    archive.put_bytes(b"two" * 100)
    first, second = replication_pass(archive).task_ids

    result = cancel_tasks(archive, [first], actor="tester")
    assert (result.cancelled, result.stopping, result.left_running) == ([first], [], [])
    assert run_task(archive, first) is None, "a worker that gets its message skips it"
    assert _task(archive, first).state == TaskState.CANCELLED
    assert _task(archive, first).last_error == "cancelled by tester"
    assert _copy(archive, first).state == CopyState.FAILED
    assert [v.state for v in list_tasks(archive) if v.id == first] == ["cancelled"]
    # Replication leaves the cancelled copy alone; the other task is untouched.
    assert replication_pass(archive).task_ids == []
    assert run_task(archive, second) == TaskState.DONE

    # Whoever waits for it sees it end (gc --wait, replicate --wait).
    waited: list[dict[str, int]] = []
    waiter = threading.Thread(
        target=lambda: waited.append(wait_for_tasks(archive, [first, second], 0.01)),
        daemon=True,  # a waiter that never returns must not keep the test process alive
    )
    waiter.start()
    waiter.join(timeout=10)
    assert waited == [{"cancelled": 1, "done": 1}]
    # Retrying is how a cancellation is undone.
    assert retry_failed(archive, [first]) == [first]
    assert _copy(archive, first).state == CopyState.PENDING
    assert run_task(archive, first) == TaskState.DONE
    assert _copy(archive, first).state == CopyState.PRESENT


def test_cancelling_by_location_takes_only_that_locations_live_tasks(
    archive: Archive, clock: FakeClock
) -> None:
    archive.put_bytes(b"a" * 100)
    archive.put_bytes(b"b" * 100)
    transfers = replication_pass(archive).task_ids
    assert run_task(archive, transfers[0]) == TaskState.DONE
    clock.advance(days=30)  # garbage after the grace period: a gc batch at the inbox
    _planned, gc_tasks = queue_gc(archive, archives=False, actor="tester")

    result = cancel_tasks(archive, location="archive", actor="tester")
    assert result.cancelled == [transfers[1]], "the done transfer stays done"
    assert _task(archive, transfers[0]).state == TaskState.DONE
    assert all(_task(archive, t).state == TaskState.QUEUED for t in gc_tasks)


def test_cancel_refuses_unknown_ended_and_running_gc_tasks_all_or_nothing(
    archive: Archive, clock: FakeClock
) -> None:
    archive.put_bytes(b"a" * 100)
    archive.put_bytes(b"b" * 100)
    done, queued = replication_pass(archive).task_ids
    assert run_task(archive, done) == TaskState.DONE
    with pytest.raises(NotFound, match="no task with id 999"):
        cancel_tasks(archive, [queued, 999], actor="t")
    with pytest.raises(Conflict, match=rf"task {done} \(done\)"):
        cancel_tasks(archive, [queued, done], actor="t")
    assert _task(archive, queued).state == TaskState.QUEUED, "nothing half-done"
    with pytest.raises(NotFound, match="no location named"):
        cancel_tasks(archive, location="nowhere", actor="t")
    with pytest.raises(BadInput):
        cancel_tasks(archive, [queued], location="archive", actor="t")

    clock.advance(days=30)
    _planned, (gc_task, *_) = queue_gc(archive, archives=False, actor="t")
    with archive.db.write() as session:
        assert task_rows.claim(session, gc_task, "w", clock(), timedelta(seconds=30))
    with pytest.raises(Conflict, match="running gc batch"):
        cancel_tasks(archive, [gc_task], actor="t")
    inbox = cancel_tasks(archive, location="inbox", actor="t")
    assert gc_task in inbox.left_running
    assert _task(archive, gc_task).state == TaskState.RUNNING


class SlowSource:
    """A real store whose objects are read in small pieces, slowly, counting them."""

    def __init__(self, real: Store, pause: float) -> None:
        self.real, self.pause = real, pause
        self.pieces = 0
        self.started = threading.Event()

    def open(self, key: str) -> Iterator[bytes]:
        for chunk in self.real.open(key):
            for start in range(0, len(chunk), PIECE):
                self.pieces += 1
                self.started.set()
                time.sleep(self.pause)
                yield chunk[start : start + PIECE]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_running_transfer_stops_at_the_next_heartbeat_and_records_nothing(
    make_archive: ArchiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(SAFEKEEPER__TASKS__HEARTBEAT_TIMEOUT="1s")  # a beat every 1/3 s
    sha256 = archive.put_bytes(os.urandom(200 * PIECE)).sha256  # 200 pieces: 10 s uncancelled
    (task_id,) = replication_pass(archive).task_ids
    source = SlowSource(archive.store("inbox"), pause=0.05)
    monkeypatch.setitem(archive._stores, "inbox", source)
    outcome: list[TaskState | None] = []
    runner = threading.Thread(target=lambda: outcome.append(run_task(archive, task_id)))
    runner.start()
    assert source.started.wait(10)

    result = cancel_tasks(archive, [task_id], actor="tester")
    cancelled_at = time.monotonic()
    assert result.stopping == [task_id]
    runner.join(timeout=5)
    assert not runner.is_alive(), "the transfer did not stop"
    assert time.monotonic() - cancelled_at < 2, "stopped at a heartbeat, not at the end"
    assert source.pieces < 100
    assert outcome == [None], "nothing recorded"
    assert _task(archive, task_id).state == TaskState.CANCELLED
    assert _copy(archive, task_id).state == CopyState.FAILED
    assert not archive.store("archive").exists(sha256), "no object, not even a partial one"


def test_replicate_counts_earlier_outstanding_tasks_at_its_locations(archive: Archive) -> None:
    archive.put_bytes(b"early" * 100)
    earlier = replication_pass(archive).task_ids
    archive.put_bytes(b"late" * 100)
    result = replication_pass(archive)
    work = replication.outstanding(archive, result)
    assert work.locations == ["archive"]
    assert work.task_ids == sorted(earlier + result.task_ids)
    assert work.earlier == len(earlier) == 1
    # A task of the pass that a fast worker already ended still counts.
    with archive.db.write() as session:
        session.execute(
            update(Task).where(Task.id.in_(result.task_ids)).values(state=TaskState.DONE)
        )
    again = replication.outstanding(archive, result)
    assert again.task_ids == work.task_ids
    with archive.db.read() as session:
        at_archive = session.scalars(select(Task.id).where(Task.state == TaskState.QUEUED)).all()
    assert list(at_archive) == earlier


def test_a_cancelled_gc_batch_has_ended_for_a_gc_run(archive: Archive, clock: FakeClock) -> None:
    """An API/dashboard gc run waits until its batches have ended: a cancelled one has
    (counted as live, it kept the run waiting forever)."""
    from safekeeper.engine.gc_runs import _live

    archive.put_bytes(b"a" * 100)
    assert run_task(archive, replication_pass(archive).task_ids[0]) == TaskState.DONE
    clock.advance(days=30)
    _planned, task_ids = queue_gc(archive, archives=False, actor="t")
    assert task_ids and _live(archive, task_ids) == task_ids
    cancel_tasks(archive, task_ids, actor="t")
    assert _live(archive, task_ids) == []

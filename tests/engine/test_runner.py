"""The task runner with the embedded executor, on SQLite and PostgreSQL.

Claims are exactly-once (a queued task, and a stale running one, each have one
winner among concurrent claimers); transient store errors are retried with
exponential backoff; permanent ones fail the task and its copy until an operator
retries them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Copy, CopyState, Location, Task, TaskState
from safekeeper.engine.embedded import run_due
from safekeeper.engine.runner import run_task
from safekeeper.errors import PermanentStoreError, StoreError, TransientStoreError
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.operations.tasks import list_tasks, retry_failed
from safekeeper.stores.base import PutResult, Source, Store
from tests.conftest import FakeClock

RACERS = 8
T = TypeVar("T")


class FailingStore:
    """Delegates to a real store, but its first ``failures`` puts raise ``error``."""

    def __init__(self, real: Store, failures: int, error: type[StoreError]) -> None:
        self.real = real
        self.remaining = failures
        self.error = error
        self.puts = 0
        self._lock = threading.Lock()

    def put(self, key: str, source: Source) -> PutResult:
        with self._lock:
            self.puts += 1
            failing = self.remaining > 0
            if failing:
                self.remaining -= 1
        if failing:
            raise self.error(f"injected failure #{self.puts}")
        return self.real.put(key, source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _inject(
    archive: Archive,
    monkeypatch: pytest.MonkeyPatch,
    failures: int,
    error: type[StoreError] = TransientStoreError,
) -> tuple[Store, FailingStore]:
    real = archive.store("archive")
    failing = FailingStore(real, failures, error)
    monkeypatch.setitem(archive._stores, "archive", failing)
    return real, failing


def _transfer_task(archive: Archive) -> tuple[int, str]:
    """Put a blob into the inbox and schedule its transfer to the archive."""
    outcome = archive.put_bytes(os.urandom(50_000))
    result = replication_pass(archive)
    assert len(result.task_ids) == 1
    return result.task_ids[0], outcome.sha256


def _task(archive: Archive, task_id: int) -> Task:
    with archive.db.read() as session:
        return session.get_one(Task, task_id)


def _archive_copy(archive: Archive, task_id: int) -> Copy:
    with archive.db.read() as session:
        copy = session.scalar(
            select(Copy)
            .join(Task, Task.copy_id == Copy.id)
            .join(Location, Copy.location_id == Location.id)
            .where(Task.id == task_id, Location.name == "archive")
        )
        assert copy is not None
        return copy


def _race(count: int, action: Callable[[int], T]) -> list[T]:
    """Run ``action(i)`` in ``count`` threads released together."""
    barrier = threading.Barrier(count)

    def go(i: int) -> T:
        barrier.wait()
        return action(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(go, range(count)))


def _claim(archive: Archive, task_id: int, worker: str) -> bool:
    timeout = archive.config.tasks.heartbeat_timeout
    with archive.db.write() as session:
        return task_rows.claim(session, task_id, worker, archive.clock(), timeout)


def _assert_archived(archive: Archive, real: Store, task_id: int, sha256: str) -> None:
    copy = _archive_copy(archive, task_id)
    assert copy.state == CopyState.PRESENT
    assert copy.verified_at == archive.clock()
    assert copy.last_error is None
    digest = hashlib.sha256()
    for chunk in real.open(sha256):
        digest.update(chunk)
    assert digest.hexdigest() == sha256


@pytest.fixture
def real_archive_store(archive: Archive) -> Iterator[Store]:
    yield archive.store("archive")


def test_concurrent_claims_of_a_queued_task_have_one_winner(archive: Archive) -> None:
    task_id, _ = _transfer_task(archive)

    wins = _race(RACERS, lambda i: _claim(archive, task_id, f"worker-{i}"))

    assert wins.count(True) == 1
    row = _task(archive, task_id)
    assert row.state == TaskState.RUNNING
    assert row.attempts == 1
    assert row.claimed_by == f"worker-{wins.index(True)}"


def test_concurrent_runners_run_a_task_once(archive: Archive, real_archive_store: Store) -> None:
    task_id, sha256 = _transfer_task(archive)

    outcomes = _race(RACERS, lambda _i: run_task(archive, task_id))

    assert outcomes.count(TaskState.DONE) == 1
    assert outcomes.count(None) == RACERS - 1
    row = _task(archive, task_id)
    assert (row.state, row.attempts) == (TaskState.DONE, 1)
    _assert_archived(archive, real_archive_store, task_id, sha256)


def test_stale_running_task_is_reclaimed_by_exactly_one(archive: Archive, clock: FakeClock) -> None:
    task_id, _ = _transfer_task(archive)
    timeout = archive.config.tasks.heartbeat_timeout
    assert _claim(archive, task_id, "dead-worker")

    clock.advance(seconds=timeout.total_seconds() - 1)
    early = _race(RACERS, lambda i: _claim(archive, task_id, f"early-{i}"))
    assert early.count(True) == 0, "a task with a fresh heartbeat must not be taken over"

    clock.advance(seconds=2)
    wins = _race(RACERS, lambda i: _claim(archive, task_id, f"worker-{i}"))

    assert wins.count(True) == 1
    row = _task(archive, task_id)
    assert row.state == TaskState.RUNNING
    assert row.attempts == 2
    assert row.claimed_by == f"worker-{wins.index(True)}"
    # The presumed-dead worker can neither keep its claim alive nor record an outcome.
    with archive.db.write() as session:
        assert not task_rows.heartbeat(session, [task_id], "dead-worker", clock())
        assert not task_rows.finish(session, task_id, "dead-worker", TaskState.DONE, clock())
    assert _task(archive, task_id).state == TaskState.RUNNING


def test_stale_task_is_run_to_completion_by_one_of_several_runners(
    archive: Archive, clock: FakeClock, real_archive_store: Store
) -> None:
    task_id, sha256 = _transfer_task(archive)
    assert _claim(archive, task_id, "dead-worker")
    clock.advance(seconds=archive.config.tasks.heartbeat_timeout.total_seconds() + 1)

    outcomes = _race(RACERS, lambda _i: run_task(archive, task_id))

    assert outcomes.count(TaskState.DONE) == 1
    assert outcomes.count(None) == RACERS - 1
    row = _task(archive, task_id)
    assert (row.state, row.attempts) == (TaskState.DONE, 2)
    _assert_archived(archive, real_archive_store, task_id, sha256)


def test_transient_errors_are_retried_with_exponential_backoff(
    archive: Archive, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id, sha256 = _transfer_task(archive)
    real, failing = _inject(archive, monkeypatch, failures=3)
    base = archive.config.tasks.retry_base

    for attempt in (1, 2, 3):
        assert run_due(archive) == {"queued": 1}
        row = _task(archive, task_id)
        delay = base * 2 ** (attempt - 1)
        assert row.state == TaskState.QUEUED
        assert row.attempts == attempt
        assert row.not_before == clock() + delay
        assert row.last_error is not None and f"injected failure #{attempt}" in row.last_error
        copy = _archive_copy(archive, task_id)
        assert (copy.state, copy.retries) == (CopyState.PENDING, attempt)
        assert copy.last_error is not None and "injected" in copy.last_error
        # Not due until its backoff has passed.
        clock.advance(seconds=delay.total_seconds() - 0.001)
        assert run_due(archive) == {}
        clock.advance(seconds=0.001)

    assert run_due(archive) == {"done": 1}
    assert failing.puts == 4
    row = _task(archive, task_id)
    assert (row.state, row.attempts, row.last_error) == (TaskState.DONE, 4, None)
    assert _archive_copy(archive, task_id).retries == 3
    _assert_archived(archive, real, task_id, sha256)


def test_backoff_is_capped_by_retry_max(
    archive: Archive, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many attempts with a small cap: the delay doubles until it reaches retry_max.
    config = archive.config.model_copy(
        update={
            "tasks": archive.config.tasks.model_copy(update={"retry_max": timedelta(seconds=5)}),
            "policy": archive.config.policy.model_copy(update={"max_retries": 6}),
        }
    )
    monkeypatch.setattr(archive, "config", config)
    task_id, _ = _transfer_task(archive)
    _inject(archive, monkeypatch, failures=100)
    delays = []
    for _ in range(5):
        assert run_due(archive) == {"queued": 1}
        delay = _task(archive, task_id).not_before - clock()
        delays.append(delay.total_seconds())
        clock.advance(seconds=delay.total_seconds())
    assert delays == [2, 4, 5, 5, 5]


def test_transient_errors_past_the_attempt_limit_fail_the_task(
    archive: Archive, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id, _ = _transfer_task(archive)
    _inject(archive, monkeypatch, failures=100)
    limit = archive.config.policy.max_retries

    for _ in range(limit - 1):
        assert run_due(archive) == {"queued": 1}
        clock.advance(seconds=(_task(archive, task_id).not_before - clock()).total_seconds())
    assert run_due(archive) == {"failed": 1}

    row = _task(archive, task_id)
    assert (row.state, row.attempts) == (TaskState.FAILED, limit)
    copy = _archive_copy(archive, task_id)
    assert (copy.state, copy.retries) == (CopyState.FAILED, limit)
    assert copy.last_error is not None and f"injected failure #{limit}" in copy.last_error


def test_permanent_error_fails_until_retried(
    archive: Archive, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id, sha256 = _transfer_task(archive)
    real, failing = _inject(archive, monkeypatch, failures=100, error=PermanentStoreError)

    assert run_due(archive) == {"failed": 1}

    assert failing.puts == 1, "a permanent error is not retried"
    row = _task(archive, task_id)
    assert (row.state, row.attempts) == (TaskState.FAILED, 1)
    assert row.finished_at == clock()
    assert row.last_error is not None and "injected failure #1" in row.last_error
    copy = _archive_copy(archive, task_id)
    assert copy.state == CopyState.FAILED
    assert copy.last_error is not None and "injected failure #1" in copy.last_error
    failed = list_tasks(archive, failed_only=True)
    assert [(v.id, v.state, v.blob, v.location) for v in failed] == [
        (task_id, "failed", sha256, "archive")
    ]
    clock.advance(hours=1)
    assert run_due(archive) == {}, "a failed task stays failed until retried"

    monkeypatch.setitem(archive._stores, "archive", real)  # the operator fixes the store
    assert retry_failed(archive) == [task_id]
    assert _archive_copy(archive, task_id).state == CopyState.PENDING
    assert run_due(archive) == {"done": 1}

    row = _task(archive, task_id)
    assert (row.state, row.attempts, row.last_error) == (TaskState.DONE, 1, None)
    assert list_tasks(archive, failed_only=True) == []
    _assert_archived(archive, real, task_id, sha256)

"""A worker that cannot wedge (issue 15): a panic in native code fails one attempt and
the batch goes on; a database error at heartbeat time does not end the heartbeats; a
database restart while a task runs neither loses its outcome nor fails it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import obstore
import obstore.store
import pytest
from sqlalchemy.exc import OperationalError

from safekeeper.archive import Archive
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Task, TaskState
from safekeeper.engine.handlers import HANDLERS
from safekeeper.engine.runner import run_batch, run_task
from safekeeper.engine.types import Completion, TaskInfo
from safekeeper.services.copies.replication import replication_pass
from safekeeper.stores.base import PutResult, Source, Store
from tests.conftest import ArchiveFactory, FakeClock
from tests.pg import PgCluster


def native_panic() -> None:
    """Make obstore panic for real: a Python callback that re-enters its runtime."""
    memory = obstore.store.MemoryStore()
    obstore.put(memory, "a", b"x")

    def chunks() -> Any:
        yield bytes(obstore.get(memory, "a").bytes())

    obstore.put(memory, "b", chunks(), use_multipart=True)


class WrappedStore:
    def __init__(self, real: Store, on_put: Any) -> None:
        self.real, self.on_put = real, on_put

    def put(self, key: str, source: Source) -> PutResult:
        self.on_put()
        return self.real.put(key, source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _state(archive: Archive, task_id: int) -> Task:
    with archive.db.read() as session:
        return session.get_one(Task, task_id)


def test_a_panic_in_native_code_fails_one_attempt_and_the_batch_goes_on(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.put_bytes(b"first blob" * 1000)
    archive.put_bytes(b"second blob" * 1000)
    task_ids = replication_pass(archive).task_ids
    assert len(task_ids) == 2
    panics = iter([True])
    lock = threading.Lock()

    def maybe_panic() -> None:
        with lock:
            panic = next(panics, False)
        if panic:
            native_panic()

    monkeypatch.setitem(
        archive._stores, "archive", WrappedStore(archive.store("archive"), maybe_panic)
    )
    with ThreadPoolExecutor(2) as pool:
        states = run_batch(archive, task_ids, "worker-1", pool)
    assert sorted(str(state) for state in states) == sorted(
        [str(TaskState.DONE), str(TaskState.QUEUED)]
    )
    errors = [_state(archive, task_id).last_error or "" for task_id in task_ids]
    assert any("PanicException" in error for error in errors)
    # The panicked task is retried and succeeds: nothing is left running.
    retry = next(t for t in task_ids if _state(archive, t).state == TaskState.QUEUED)
    with archive.db.write() as session:
        session.get_one(Task, retry).not_before = archive.clock()
    assert run_task(archive, retry) == TaskState.DONE


def test_heartbeats_survive_a_database_error(
    make_archive: ArchiveFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(SAFEKEEPER__TASKS__HEARTBEAT_TIMEOUT="1s")
    archive.put_bytes(b"slow blob" * 1000)
    (task_id,) = replication_pass(archive).task_ids
    beats: list[str] = []
    real_heartbeat = task_rows.heartbeat

    def flaky_heartbeat(*args: Any, **kwargs: Any) -> bool:
        if not beats:
            beats.append("error")
            raise OperationalError("UPDATE tasks", {}, Exception("database restarting"))
        beats.append("ok")
        return real_heartbeat(*args, **kwargs)

    monkeypatch.setattr(task_rows, "heartbeat", flaky_heartbeat)
    monkeypatch.setitem(
        archive._stores,
        "archive",
        WrappedStore(archive.store("archive"), lambda: time.sleep(1.6)),  # ~4 beats
    )
    assert run_task(archive, task_id) == TaskState.DONE
    assert beats[0] == "error"
    assert beats.count("ok") >= 2, beats


def _restart(cluster: PgCluster, after: float) -> threading.Thread:
    """Stop the database server now, start it again ``after`` seconds later."""
    cluster.stop()
    restart = threading.Thread(target=lambda: (time.sleep(after), cluster.start()))
    restart.start()
    return restart


@pytest.mark.slow
@pytest.mark.postgres
def test_an_outcome_is_recorded_once_the_database_is_back(
    make_archive: ArchiveFactory, postgres_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(postgres_cluster.url)
    archive.put_bytes(b"blob" * 1000)
    (task_id,) = replication_pass(archive).task_ids
    restarts: list[threading.Thread] = []
    monkeypatch.setitem(
        archive._stores,
        "archive",
        WrappedStore(
            archive.store("archive"), lambda: restarts.append(_restart(postgres_cluster, 2))
        ),
    )
    # The copy is written while the database is down; recording it waits for the database.
    assert run_task(archive, task_id) == TaskState.DONE
    restarts[0].join()
    assert _state(archive, task_id).attempts == 1


class _DatabaseGoesAway:
    """The transfer handler, run while the database restarts."""

    def __init__(self, real: Any, cluster: PgCluster) -> None:
        self.real, self.cluster = real, cluster
        self.restarts: list[threading.Thread] = []

    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        if not self.restarts:
            self.restarts.append(_restart(self.cluster, 1))
        # Without what the batch read ahead, so the handler reads the database itself
        # (now, while it is down), as a task run outside a batch does.
        completion: Completion = self.real.execute(archive, replace(task, prepared=None))
        return completion

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_database_outage_does_not_use_up_the_last_attempt(
    make_archive: ArchiveFactory,
    postgres_cluster: PgCluster,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = make_archive(postgres_cluster.url)
    archive.put_bytes(b"blob" * 1000)
    (task_id,) = replication_pass(archive).task_ids
    with archive.db.write() as session:
        session.get_one(Task, task_id).max_attempts = 1
    handler = _DatabaseGoesAway(HANDLERS["transfer"], postgres_cluster)
    monkeypatch.setitem(HANDLERS, "transfer", handler)

    assert run_task(archive, task_id) == TaskState.QUEUED, "retried, not failed"
    handler.restarts[0].join()
    task = _state(archive, task_id)
    assert (task.attempts, task.max_attempts) == (1, 1)
    assert (task.last_error or "").startswith("database unavailable")
    clock.advance(seconds=60)
    assert run_task(archive, task_id) == TaskState.DONE

"""A worker that cannot wedge (issue 15): a panic in native code fails one attempt and
the batch goes on; a database error at heartbeat time does not end the heartbeats."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import obstore
import obstore.store
import pytest
from sqlalchemy.exc import OperationalError

from safekeeper.archive import Archive
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Task, TaskState
from safekeeper.engine.runner import run_batch, run_task
from safekeeper.services.replication import replication_pass
from safekeeper.stores.base import PutResult, Source, Store
from tests.conftest import ArchiveFactory


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

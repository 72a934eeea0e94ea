"""The watchdog (issue 15): a transfer whose worker thread moves no bytes for
``tasks.stall_timeout`` is logged at ERROR, counted by ``safekeeper status``, and its
attempt failed so the task can be claimed again — while the thread is still stuck.

The stuck source is real: the inbox object is replaced by a named pipe that a test
thread writes a little into and then holds open, so the transfer blocks in ``read``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from safekeeper.archive import Archive
from safekeeper.cli import app
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Blob, Copy, Task, TaskState
from safekeeper.engine.handlers import HANDLERS
from safekeeper.engine.runner import run_batch, run_task
from safekeeper.engine.types import Completion, Handler, TaskInfo
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.operations.status import site_queues, system_status
from safekeeper.stores.filesystem import FileStore
from safekeeper.stores.s3 import S3Store
from tests.conftest import ArchiveFactory, FakeClock
from tests.servers import S3Server

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
STALL = "1s"
MIB = 1024 * 1024


class StuckSource:
    """The inbox object as a named pipe: a thread writes the first ``head`` bytes of
    ``data`` and holds the pipe open (the reader blocks); ``release`` writes the rest
    and closes it."""

    def __init__(self, path: Path, data: bytes = DATA, head: int = 100_000) -> None:
        self.path, self.data, self.head = path, data, head
        path.chmod(0o644)
        path.unlink()
        os.mkfifo(path)
        self._go_on = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        with open(self.path, "wb", buffering=0) as pipe:  # blocks until the reader opens
            pipe.write(self.data[: self.head])
            self._go_on.wait(60)
            pipe.write(self.data[self.head :])

    def release(self) -> None:
        self._go_on.set()
        self._thread.join(10)

    def restore(self) -> None:
        """The real object back (a remounted disk, say), for the retry."""
        self.path.unlink()
        self.path.write_bytes(self.data)


def _inbox_path(archive: Archive, sha256: str = SHA) -> Path:
    store = archive.store("inbox")
    assert isinstance(store, FileStore)
    return store.root / store.layout.path_for_key(sha256)


@pytest.fixture
def stalling(make_archive: ArchiveFactory) -> Archive:
    archive = make_archive(SAFEKEEPER__TASKS__STALL_TIMEOUT=STALL)
    archive.put_bytes(DATA)
    return archive


@pytest.fixture
def stuck(stalling: Archive) -> Iterator[StuckSource]:
    source = StuckSource(_inbox_path(stalling))
    yield source
    source.release()


def _task(archive: Archive, task_id: int) -> Task:
    with archive.db.read() as session:
        return session.get_one(Task, task_id)


def _archive_objects(archive: Archive) -> list[Path]:
    store = archive.store("archive")
    assert isinstance(store, FileStore)
    return [p for p in store.root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_stuck_transfer_is_reported_and_given_up_while_the_batch_goes_on(
    stalling: Archive, stuck: StuckSource, caplog: pytest.LogCaptureFixture, data_dir: Path
) -> None:
    stalling.put_bytes(b"a quick one" * 1000)
    task_ids = replication_pass(stalling).task_ids
    assert len(task_ids) == 2
    stuck_id = _task_of(stalling, SHA)
    caplog.set_level(logging.ERROR, logger="safekeeper.engine.runner")
    pool = ThreadPoolExecutor(2)
    try:
        states: list[object] = []
        runner = threading.Thread(
            target=lambda: states.extend(run_batch(stalling, task_ids, "w1", pool))
        )
        runner.start()
        runner.join(20)
        # The batch ends although one of its threads is still blocked in read().
        assert not runner.is_alive(), "run_batch waited for the stuck thread"
        assert sorted(map(str, states)) == sorted([str(TaskState.DONE), str(TaskState.QUEUED)])
        row = _task(stalling, stuck_id)
        assert row.state == TaskState.QUEUED and row.claimed_by is None
        assert (row.last_error or "").startswith("stalled: no progress for")
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert f"transfer task {stuck_id}" in errors[0]
        assert f"blob {SHA} to location archive" in errors[0]
        assert "100000 bytes moved" in errors[0]
        (queue,) = [q for q in site_queues(stalling) if q.stalled]
        assert queue.stalled == 1
        assert not system_status(stalling).healthy
        status = CliRunner().invoke(app, ["--data-dir", str(data_dir), "status", "--json"])
        assert status.exit_code == 1, status.output  # needs attention
        assert [q["stalled"] for q in json.loads(status.stdout)["queues"]] == [1]
    finally:
        # The stuck thread gets the rest of the bytes, asks for the next chunk, and is
        # told to stop: it writes nothing, and its late outcome is not recorded.
        stuck.release()
        pool.shutdown(wait=True)
    assert _archive_objects(stalling) == [_object_path(stalling, b"a quick one" * 1000)]
    assert _task(stalling, stuck_id).state == TaskState.QUEUED

    # The retry, with the source readable again, succeeds; the stall is no longer counted.
    stuck.restore()
    with stalling.db.write() as session:
        session.get_one(Task, stuck_id).not_before = stalling.clock()
    assert run_task(stalling, stuck_id) == TaskState.DONE
    assert all(q.stalled == 0 for q in site_queues(stalling))


def _task_of(archive: Archive, sha256: str) -> int:
    with archive.db.read() as session:
        return session.scalars(
            select(Task.id)
            .join(Copy, Task.copy_id == Copy.id)
            .join(Blob, Copy.blob_id == Blob.id)
            .where(Blob.sha256 == sha256)
        ).one()


def _object_path(archive: Archive, data: bytes) -> Path:
    store = archive.store("archive")
    assert isinstance(store, FileStore)
    return store.root / store.layout.path_for_key(hashlib.sha256(data).hexdigest())


def test_stuck_task_can_be_claimed_again_while_its_thread_is_blocked(
    stalling: Archive, stuck: StuckSource, clock: FakeClock
) -> None:
    (task_id,) = replication_pass(stalling).task_ids
    result: list[object] = []
    # As a Celery worker runs it: in its own thread, no pool to abandon it to.
    runner = threading.Thread(target=lambda: result.append(run_task(stalling, task_id, "w1")))
    runner.start()
    try:
        deadline = threading.Event()
        for _ in range(100):
            if (_task(stalling, task_id).last_error or "").startswith("stalled:"):
                break
            deadline.wait(0.1)
        row = _task(stalling, task_id)
        assert row.state == TaskState.QUEUED and runner.is_alive()
        assert row.attempts == 1 and (row.last_error or "").startswith("stalled:")
        # After the backoff another worker — here one of the same name, the hardest
        # case for stale results — claims the task.
        clock.advance(seconds=10)
        heartbeat = stalling.config.tasks.heartbeat_timeout
        with stalling.db.write() as session:
            assert task_rows.claim(session, task_id, "w1", clock(), heartbeat)
    finally:
        stuck.release()
        runner.join(20)
    assert not runner.is_alive()
    assert result == [TaskState.QUEUED]  # what the watchdog recorded for that attempt
    # The stuck attempt's late failure did not touch the new attempt's claim.
    row = _task(stalling, task_id)
    assert (row.state, row.claimed_by, row.attempts) == (TaskState.RUNNING, "w1", 2)


@pytest.mark.s3
def test_stuck_transfer_to_s3_aborts_its_multipart_upload(
    make_archive: ArchiveFactory, moto_server: S3Server
) -> None:
    bucket = moto_server.make_bucket()
    archive = make_archive(
        SAFEKEEPER__TASKS__STALL_TIMEOUT=STALL,
        SAFEKEEPER__LOCATIONS__ARCHIVE__STORE=f"s3://{bucket}/objects",
        SAFEKEEPER__LOCATIONS__ARCHIVE__ENDPOINT=moto_server.endpoint,
        SAFEKEEPER__LOCATIONS__ARCHIVE__REGION=moto_server.region,
        SAFEKEEPER__LOCATIONS__ARCHIVE__ACCESS_KEY_ID=moto_server.access_key_id,
        SAFEKEEPER__LOCATIONS__ARCHIVE__SECRET_ACCESS_KEY=moto_server.secret_access_key,
        SAFEKEEPER__LOCATIONS__ARCHIVE__ALLOW_HTTP="true",
    )
    target = archive.store("archive")
    assert isinstance(target, S3Store)
    # Small limits, so the stall comes after the first part was uploaded.
    target.single_put_max, target.part_size = 64 * 1024, 5 * MIB
    data = os.urandom(7 * MIB)
    sha256 = hashlib.sha256(data).hexdigest()
    archive.put_bytes(data)
    (task_id,) = replication_pass(archive).task_ids
    stuck = StuckSource(_inbox_path(archive, sha256), data, head=6 * MIB)
    client = moto_server.client()
    with ThreadPoolExecutor(1) as pool:
        try:
            assert run_batch(archive, [task_id], "w1", pool) == [TaskState.QUEUED]
            assert len(client.list_multipart_uploads(Bucket=bucket).get("Uploads") or []) == 1
        finally:
            stuck.release()
    # The thread, told to stop at its next chunk, aborted its upload.
    assert (client.list_multipart_uploads(Bucket=bucket).get("Uploads") or []) == []
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=f"objects/{sha256}")


def test_slow_transfer_that_keeps_moving_is_not_stalled(stalling: Archive) -> None:
    (task_id,) = replication_pass(stalling).task_ids
    path = _inbox_path(stalling)
    path.chmod(0o644)
    path.unlink()
    os.mkfifo(path)

    def trickle() -> None:  # 3 s in all, three times the stall timeout, never 1 s idle
        with open(path, "wb", buffering=0) as pipe:
            for start in range(0, len(DATA), 30_000):
                pipe.write(DATA[start : start + 30_000])
                time.sleep(0.3)

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        assert run_task(stalling, task_id) == TaskState.DONE
    finally:
        feeder.join(20)
    assert _task(stalling, task_id).last_error is None


class SilentFirst:
    """The real transfer after a silent pause, as a handler that does not report."""

    reports_progress = False

    def __init__(self, real: Handler) -> None:
        self.real = real

    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        time.sleep(2.5)
        return self.real.execute(archive, task)

    def failed(self, *args: Any) -> None:
        self.real.failed(*args)


def test_tasks_that_do_not_report_progress_are_not_watched(
    stalling: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    (task_id,) = replication_pass(stalling).task_ids
    monkeypatch.setitem(HANDLERS, "transfer", SilentFirst(HANDLERS["transfer"]))
    assert run_task(stalling, task_id) == TaskState.DONE


def _trickle_from(path: Path, data: bytes) -> threading.Thread:
    """``path`` becomes a named pipe fed ``data`` slowly (1.5 s in all, never 1 s idle)
    once its reader opens it."""
    path.chmod(0o644)
    path.unlink()
    os.mkfifo(path)

    def trickle() -> None:
        with open(path, "wb", buffering=0) as pipe:
            for start in range(0, len(data), 60_000):
                pipe.write(data[start : start + 60_000])
                time.sleep(0.3)

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    return feeder


def test_a_task_waiting_its_turn_in_a_batch_is_not_stalled(stalling: Archive) -> None:
    """One Celery message runs its batch in order: the last task waits longer than the
    stall timeout while the ones before it move bytes, and must not be given up."""
    other = os.urandom(300_000)
    stalling.put_bytes(other)
    task_ids = replication_pass(stalling).task_ids
    assert len(task_ids) == 2
    feeders = [
        _trickle_from(_inbox_path(stalling, SHA), DATA),
        _trickle_from(_inbox_path(stalling, hashlib.sha256(other).hexdigest()), other),
    ]
    try:
        assert run_batch(stalling, task_ids, "w1") == [TaskState.DONE, TaskState.DONE]
    finally:
        for feeder in feeders:
            feeder.join(20)
    assert [_task(stalling, t).last_error for t in task_ids] == [None, None]

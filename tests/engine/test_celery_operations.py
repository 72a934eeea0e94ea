"""Operating the distributed mode (issue 15) with real processes: PostgreSQL, Redis as
the Celery broker, a ``safekeeper worker`` and the CLI.

- ``tasks cancel``: a queued task's message is skipped by the worker that gets it; a
  running transfer (reading a FIFO the test feeds, so it runs exactly as long as the
  test wants) stops at the next heartbeat and records nothing. The worker's log names
  each task's id, kind, blob and location, and says nothing at INFO about successes.
- ``replicate --wait`` waits for tasks an earlier ``replicate`` sent, too.
- A broker that is down, or accepts connections and never answers, makes a command
  fail within seconds with one ``error:`` line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Copy, CopyState, Task, TaskState
from tests.engine.test_distributed import Workers
from tests.util import free_port

COMMAND_TIMEOUT = 60.0
#: The Redis server is shared by the session's tests, and a site's queue is named after
#: it: each test gets its own site, so no message left by another test reaches it.
SITE = "site-a"
PIECE = 64 * 1024


def _config(root: Path, database_url: str, broker_url: str, site: str = SITE) -> Path:
    document = {
        "database": {"url": database_url},
        "tasks": {
            "executor": "celery",
            "broker_url": broker_url,
            "threads": 2,
            "heartbeat_timeout": "3s",  # a heartbeat every second
            "retry_base": "1s",
            "replicate_interval": "1h",
        },
        "sites": {site: {"description": "the only site"}},
        "locations": {
            "inbox": {"kind": "source", "site": site, "store": "file:inbox"},
            "archive": {"kind": "archive", "site": site, "store": "file:archive"},
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    config = root / "safekeeper.toml"
    config.write_text(tomli_w.dumps(document))
    return config


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SAFEKEEPER", "AWS_"))}


def _safekeeper(
    config: Path, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "safekeeper", "--config", str(config), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[tuple[Path, Archive]]:
    site = f"site-{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path / "deploy", postgres_url, redis_url, site)
    archive = Archive(load_config(config, environ={}))  # the schema, before processes race
    yield config, archive
    archive.close()


def _site(archive: Archive) -> str:
    (site,) = archive.config.sites
    return site


def _task(archive: Archive, task_id: int) -> Task:
    with archive.db.read() as session:
        return session.get_one(Task, task_id)


def _copy_state(archive: Archive, task_id: int) -> str:
    with archive.db.read() as session:
        return session.get_one(Copy, session.get_one(Task, task_id).copy_id).state


def _wait(condition: object, what: str, workers: Workers, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        workers.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{workers.tails()}")
        time.sleep(0.05)


def _object_path(root: Path, sha256: str) -> Path:
    (path,) = [p for p in root.rglob(sha256) if p.is_file()]
    return path


@pytest.mark.slow
@pytest.mark.postgres
def test_cancel_skips_a_queued_task_and_stops_a_running_one(
    deployment: tuple[Path, Archive], tmp_path: Path
) -> None:
    config, archive = deployment
    root = config.parent
    slow = archive.put_bytes(os.urandom(4 * PIECE)).sha256
    other = archive.put_bytes(os.urandom(1000)).sha256
    # The slow blob's object becomes a FIFO: the transfer reads what the test writes.
    fifo = _object_path(root / "inbox", slow)
    fifo.unlink()
    os.mkfifo(fifo)

    _safekeeper(config, "replicate")  # both messages wait in Redis: no worker yet
    listed = json.loads(_safekeeper(config, "tasks", "--json").stdout)
    ids = {row["blob"]: row["id"] for row in listed}
    slow_id, other_id = ids[slow], ids[other]
    out = _safekeeper(config, "tasks", "cancel", str(other_id)).stdout
    assert f"cancelled 1 queued task ({other_id})" in out

    logs = tmp_path / "logs"
    logs.mkdir()
    workers = Workers(config, logs, _env())
    try:
        workers.start(_site(archive))
        workers.wait_ready(_site(archive))
        _wait(lambda: _task(archive, slow_id).state == TaskState.RUNNING, "the transfer", workers)
        with open(fifo, "wb", buffering=0) as feed:  # the worker already waits to read
            feed.write(b"x" * PIECE)
            out = _safekeeper(config, "tasks", "cancel", "--location", "archive").stdout
            assert f"stopping 1 running task ({slow_id})" in out
            cancelled_at = time.monotonic()
            with pytest.raises(BrokenPipeError):  # the worker stopped reading: it closed
                while time.monotonic() - cancelled_at < 20:
                    feed.write(b"x" * PIECE)
                    time.sleep(0.05)
        assert time.monotonic() - cancelled_at < 10, "stopped at a heartbeat"

        log = logs / f"worker-{_site(archive)}-1.log"
        stopped = (
            f"task {slow_id} (transfer of blob {slow[:16]} to archive): cancelled while "
            "running; stopped, nothing recorded"
        )
        skipped = f"task {other_id} (transfer of blob {other[:16]} to archive): cancelled; skipped"
        _wait(lambda: stopped in log.read_text(), "the worker's line on the stop", workers)
        _wait(lambda: skipped in log.read_text(), "the worker's line on the skip", workers)
        for task_id in (slow_id, other_id):
            assert _task(archive, task_id).state == TaskState.CANCELLED
            assert _copy_state(archive, task_id) == CopyState.FAILED
        assert _task(archive, other_id).attempts == 0, "never claimed"
        assert not list((root / "archive").rglob(slow)), "nothing written at the target"
        states = {
            row["id"]: row["state"]
            for row in json.loads(_safekeeper(config, "tasks", "--json").stdout)
        }
        assert states == {slow_id: "cancelled", other_id: "cancelled"}

        workers.check_alive()
    finally:
        workers.stop_all()


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_log_names_tasks_and_keeps_successes_at_debug(
    deployment: tuple[Path, Archive], tmp_path: Path
) -> None:
    config, archive = deployment
    root = config.parent
    fine = archive.put_bytes(os.urandom(1000)).sha256
    lost = archive.put_bytes(os.urandom(1000)).sha256
    _object_path(root / "inbox", lost).unlink()  # its transfer fails, and is retried
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = Workers(config, logs, _env())
    try:
        workers.start(_site(archive))
        workers.wait_ready(_site(archive))
        _safekeeper(config, "replicate")
        ids = {
            row["blob"]: row["id"]
            for row in json.loads(_safekeeper(config, "tasks", "--json").stdout)
        }
        log = logs / f"worker-{_site(archive)}-1.log"
        retry_line = f"task {ids[lost]} (transfer of blob {lost[:16]} to archive): attempt failed"
        _wait(lambda: retry_line in log.read_text(), "the retry's log line", workers)
        _wait(lambda: _task(archive, ids[fine]).state == TaskState.DONE, "the transfer", workers)
        time.sleep(0.5)
        text = log.read_text()
        assert "WARNING" in text.split(retry_line)[0].splitlines()[-1], text
        # A routine success says nothing at INFO: neither Celery's "received" and
        # "succeeded" lines (which name only Celery's message id) nor the worker's own.
        assert "succeeded in" not in text and "] received" not in text, text
        assert f"task {ids[fine]} " not in text, text
        workers.check_alive()
    finally:
        workers.stop_all()


@pytest.mark.slow
@pytest.mark.postgres
def test_replicate_wait_waits_for_tasks_sent_earlier(
    deployment: tuple[Path, Archive], tmp_path: Path
) -> None:
    config, archive = deployment
    for index in range(3):
        archive.put_bytes(os.urandom(1000 + index))
    assert "3 transfers scheduled" in _safekeeper(config, "replicate").stdout  # no worker yet

    waiting = subprocess.Popen(
        [sys.executable, "-m", "safekeeper", "--config", str(config), "replicate", "--wait"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = Workers(config, logs, _env())
    try:
        assert waiting.stdout is not None
        assert "0 transfers scheduled" in waiting.stdout.readline()
        # Only now, with the waiting command committed to its set of tasks, the worker.
        assert waiting.stdout.readline().strip() == (
            "waiting for 3 tasks at archive: 0 scheduled now, 3 earlier"
        )
        workers.start(_site(archive))
        out, _ = waiting.communicate(timeout=COMMAND_TIMEOUT)
        assert waiting.returncode == 0, out
        assert out.strip() == "tasks: 3 done"
        with archive.db.read() as session:
            assert set(session.scalars(select(Task.state))) == {TaskState.DONE}
    finally:
        if waiting.poll() is None:
            waiting.kill()
        workers.stop_all()


class SilentBroker:
    """A TCP server that accepts connections and never answers (a stuck broker)."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.socket.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("broker", ["refused", "silent"])
def test_a_command_that_cannot_reach_the_broker_fails_with_one_error_line(
    tmp_path: Path, broker: str
) -> None:
    silent = SilentBroker() if broker == "silent" else None
    port = silent.port if silent is not None else free_port()
    config = _config(tmp_path / "deploy", f"sqlite:///{tmp_path / 'catalog.db'}", "")
    config.write_text(
        config.read_text().replace('broker_url = ""', f'broker_url = "redis://127.0.0.1:{port}/0"')
    )
    try:
        archive = Archive(load_config(config, environ={}))
        archive.put_bytes(b"to replicate")
        archive.close()
        started = time.monotonic()
        first = _safekeeper(config, "replicate", check=False)
        assert first.returncode == 1
        assert "cannot reach the task broker" in _one_error_line(first)
        # Nothing new to send, but the task it would wait for cannot reach a worker.
        again = _safekeeper(config, "replicate", "--wait", check=False)
        assert again.returncode == 1, again.stdout
        assert "cannot reach the task broker" in _one_error_line(again)
        assert time.monotonic() - started < 45, "gave up within seconds, not minutes"
    finally:
        if silent is not None:
            silent.close()

"""Recovery in seconds, not minutes (issue 15): after the broker or the database comes
back, queued work resumes within seconds, with ``heartbeat_timeout`` at its default
(5 minutes), and no task fails because of the outage.

Real processes: a Redis server and a PostgreSQL cluster that the tests stop and start,
and a ``safekeeper worker`` running Celery.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
import tomli_w
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Task, TaskState
from safekeeper.engine.celery_app import queue_name, send_tasks
from safekeeper.services.copies.replication import replication_pass
from tests.engine.processes import Workers
from tests.pg import PgCluster
from tests.redis_server import RedisServer

#: What "in seconds" means here: from the service answering again to every task done.
RESUMED_WITHIN = 30.0
FILES = 8
THREADS = 2


class Deployment:
    """One site with a local inbox and a local archive, a Celery worker for it, and
    the archive as seen from the test."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str) -> None:
        # A site of its own: the session's Redis may hold other tests' queues.
        self.site = f"site-{uuid.uuid4().hex[:8]}"
        self.root = tmp_path / "deploy"
        (self.root / "logs").mkdir(parents=True)
        document = {
            "database": {"url": database_url},
            # heartbeat_timeout left at its default on purpose: recovery must not wait for it.
            "tasks": {"executor": "celery", "broker_url": broker_url, "threads": THREADS},
            "sites": {self.site: {"description": "the only site"}},
            "locations": {
                "inbox": {"kind": "source", "site": self.site, "store": "file:inbox"},
                "archive": {"kind": "archive", "site": self.site, "store": "file:archive"},
            },
        }
        self.config = self.root / "safekeeper.toml"
        self.config.write_text(tomli_w.dumps(document))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
        self.archive = Archive(load_config(self.config, environ={}))
        assert self.archive.config.tasks.heartbeat_timeout.total_seconds() == 300
        self.workers = Workers(self.config, self.root / "logs", self.env)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "safekeeper", "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def put_files(self, count: int) -> None:
        files = self.root / f"files-{uuid.uuid4().hex[:6]}"
        files.mkdir()
        for i in range(count):
            (files / f"file-{i}.bin").write_bytes(os.urandom(2000 + i))
        result = self.cli("put", str(files))
        assert result.returncode == 0, result.stdout + result.stderr

    def states(self, task_ids: Sequence[int]) -> dict[int, tuple[str, int, str | None]]:
        with self.archive.db.read() as session:
            rows = session.execute(
                select(Task.id, Task.state, Task.attempts, Task.last_error).where(
                    Task.id.in_(task_ids)
                )
            ).all()
        return {task_id: (state, attempts, error) for task_id, state, attempts, error in rows}

    def seconds_until_done(self, task_ids: Sequence[int], since: float) -> float:
        """Wait until every task has ended; seconds from ``since`` until then. Fails
        the test if one failed, or if they take twice the allowed time."""
        ended = {TaskState.DONE, TaskState.FAILED}
        while True:
            states = self.states(task_ids)
            if all(state in ended for state, _, _ in states.values()):
                elapsed = time.monotonic() - since
                break
            if time.monotonic() - since > 2 * RESUMED_WITHIN:
                pytest.fail(f"tasks not done: {states}\n{self.workers.tails()}")
            self.workers.check_alive()
            time.sleep(0.1)
        failed = {t: s for t, s in states.items() if s[0] != TaskState.DONE}
        assert not failed, f"tasks failed by the outage: {failed}\n{self.workers.tails()}"
        return elapsed

    def close(self) -> None:
        self.workers.stop_all()
        self.archive.close()


@pytest.fixture
def broker_outage(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, postgres_url, redis_server.url)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def database_outage(
    tmp_path: Path, postgres_cluster: PgCluster, redis_url: str
) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, postgres_cluster.url, redis_url)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_work_queued_while_the_broker_is_down_runs_once_it_is_back(
    broker_outage: Deployment, redis_server: RedisServer
) -> None:
    deployment = broker_outage
    deployment.workers.start(deployment.site)
    deployment.workers.wait_ready(deployment.site)

    redis_server.stop()
    deployment.put_files(FILES)
    result = deployment.cli("replicate")
    # The transfers are recorded, but their messages could not be sent.
    assert result.returncode != 0
    assert "cannot reach the task broker" in result.stdout + result.stderr
    with deployment.archive.db.read() as session:
        task_ids = list(session.scalars(select(Task.id).where(Task.site == deployment.site)))
    assert len(task_ids) == FILES
    time.sleep(3)  # the worker notices the outage, and its re-sends fail
    assert {s for s, _, _ in deployment.states(task_ids).values()} == {TaskState.QUEUED}

    redis_server.start()  # empty: it keeps nothing across a restart
    back = time.monotonic()
    elapsed = deployment.seconds_until_done(task_ids, back)
    print(f"resumed {elapsed:.1f} s after the broker came back")
    assert elapsed < RESUMED_WITHIN, f"{elapsed:.1f} s after the broker came back"
    assert all(attempts == 1 for _, attempts, _ in deployment.states(task_ids).values())
    deployment.workers.check_alive()


@pytest.mark.slow
@pytest.mark.postgres
def test_messages_received_while_the_database_is_down_run_once_it_is_back(
    database_outage: Deployment, postgres_cluster: PgCluster, redis_url: str
) -> None:
    deployment = database_outage
    deployment.workers.start(deployment.site)
    deployment.workers.wait_ready(deployment.site)
    deployment.put_files(FILES)
    task_ids = replication_pass(deployment.archive).task_ids  # recorded, not sent yet
    assert len(task_ids) == FILES

    postgres_cluster.stop()
    send_tasks(deployment.archive, [(task_id, deployment.site) for task_id in task_ids])
    time.sleep(4)  # the worker receives messages while it cannot reach the database
    # It holds one message per thread and leaves the rest queued, instead of draining
    # the queue into failures.
    queued = redis.Redis.from_url(redis_url).llen(queue_name(deployment.site))
    assert queued == FILES - THREADS

    postgres_cluster.start()
    back = time.monotonic()
    elapsed = deployment.seconds_until_done(task_ids, back)
    print(f"resumed {elapsed:.1f} s after the database came back")
    assert elapsed < RESUMED_WITHIN, f"{elapsed:.1f} s after the database came back"
    assert all(attempts == 1 for _, attempts, _ in deployment.states(task_ids).values())
    deployment.workers.check_alive()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_stopped_while_the_database_is_down_hands_its_messages_back(
    database_outage: Deployment, postgres_cluster: PgCluster, redis_url: str
) -> None:
    deployment = database_outage
    site = deployment.site
    deployment.workers.start(site)
    deployment.workers.wait_ready(site)
    deployment.put_files(FILES)
    task_ids = replication_pass(deployment.archive).task_ids
    broker = redis.Redis.from_url(redis_url)

    postgres_cluster.stop()
    send_tasks(deployment.archive, [(task_id, site) for task_id in task_ids])
    time.sleep(4)
    assert broker.llen(queue_name(site)) == FILES - THREADS
    worker = deployment.workers.processes[site]
    worker.terminate()
    # Its threads stop waiting for the database, so it does not hang...
    worker.wait(timeout=15)
    # ...and the messages they held are back in the queue.
    assert broker.llen(queue_name(site)) == FILES

    postgres_cluster.start()
    back = time.monotonic()
    deployment.workers.start(site)
    elapsed = deployment.seconds_until_done(task_ids, back)
    print(f"resumed {elapsed:.1f} s after the database came back, with a new worker")
    assert elapsed < RESUMED_WITHIN, f"{elapsed:.1f} s after the database came back"
    assert all(attempts == 1 for _, attempts, _ in deployment.states(task_ids).values())

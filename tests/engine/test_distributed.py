"""The distributed mode. First, what a worker re-sends (fast, on the ``archive``
fixture). Then two sites with real processes: PostgreSQL, Redis (Celery broker),
SeaweedFS (S3) and one ``safekeeper worker`` per site.

Part one: files put at site-a's inbox are replicated to site-b's S3 archive by
``replicate --wait``; every copy is present, verified, and hashes to its blob id. A
second pass copies them on, S3 to S3, to the ``mirror`` location (the archive's
``replicate_to``, another prefix of the same bucket).

Part two: the worker running a large transfer is SIGKILLed mid-upload and started
again. Its claim goes stale, the task is re-claimed exactly once (attempts == 2) and
ends with one verified archive copy whose object hashes to the blob id. The large
object then goes on to the mirror, S3 to S3 as a multipart upload. Last, ``verify``
aborts the multipart upload the killed worker left behind: none is left in the bucket.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from sqlalchemy import select
from sqlalchemy.orm import aliased

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Blob, Copy, CopyState, Location, Task, TaskState
from safekeeper.engine.celery_app import BrokerUnavailable
from safekeeper.engine.worker import Resender
from safekeeper.services.copies.replication import replication_pass
from safekeeper.stores.marker import MARKER_NAME
from tests.conftest import ArchiveFactory, FakeClock
from tests.engine.processes import Workers
from tests.servers import S3Server
from tests.util import free_port

SMALL_FILES = 20
BIG_SIZE = 320 * 1024 * 1024
PREFIX = "vault"
MIRROR_PREFIX = "mirror"
COMMAND_TIMEOUT = 90.0
RECOVERY_TIMEOUT = 120.0


def _scheduled(archive: Archive, count: int) -> list[int]:
    for _ in range(count):
        archive.put_bytes(os.urandom(1000))
    return replication_pass(archive).task_ids


def test_resender_leaves_fresh_tasks_to_their_first_message(
    archive: Archive, clock: FakeClock
) -> None:
    task_ids = _scheduled(archive, 3)
    resender = Resender(archive, ["local"])
    timeout = archive.config.tasks.heartbeat_timeout.total_seconds()

    assert resender.pick() == []
    clock.advance(seconds=timeout - 1)
    assert resender.pick() == []
    # Due for longer than the heartbeat timeout and never claimed: the message is lost.
    clock.advance(seconds=2)
    assert resender.pick() == [(task_id, "local") for task_id in task_ids]
    # Sent at most once per heartbeat timeout.
    clock.advance(seconds=timeout - 1)
    assert resender.pick() == []
    clock.advance(seconds=2)
    assert [t for t, _ in resender.pick()] == task_ids
    # Other sites' tasks are not this worker's business.
    assert Resender(archive, ["elsewhere"]).pick() == []


def test_resender_sends_retries_and_stale_tasks(archive: Archive, clock: FakeClock) -> None:
    retried, stale, healthy = _scheduled(archive, 3)
    timeout = archive.config.tasks.heartbeat_timeout
    with archive.db.write() as session:
        for task_id in (retried, stale, healthy):
            assert task_rows.claim(session, task_id, "w", clock(), timeout)
        assert task_rows.finish(
            session, retried, "w", TaskState.QUEUED, clock(), retry_at=clock() + timeout / 2
        )
    resender = Resender(archive, ["local"])
    assert resender.pick() == []

    clock.advance(seconds=timeout.total_seconds() / 2)
    assert resender.pick() == [(retried, "local")], "a retry has no message: send one at once"

    with archive.db.write() as session:
        assert task_rows.heartbeat(session, [healthy], "w", clock())
    clock.advance(seconds=timeout.total_seconds() / 2 + 1)
    assert resender.pick() == [(stale, "local")], "only the task whose heartbeat is stale"
    assert resender.pick() == []

    # Re-claimed, then stale again: a new attempt is sent without waiting.
    with archive.db.write() as session:
        assert task_rows.claim(session, stale, "w2", clock(), timeout)
    clock.advance(seconds=timeout.total_seconds() + 1)
    assert (stale, "local") in resender.pick()


def test_resender_after_a_reconnect_sends_every_due_task_but_no_running_one(
    archive: Archive, clock: FakeClock
) -> None:
    queued, running = _scheduled(archive, 2)
    with archive.db.write() as session:
        assert task_rows.claim(
            session, running, "w", clock(), archive.config.tasks.heartbeat_timeout
        )
    resender = Resender(archive, ["local"])
    assert resender.pick() == []
    # The broker may have restarted empty: no waiting for the heartbeat timeout. The
    # running task keeps its fresh claim: a message for it would do nothing anyway.
    resender.resend_all = True
    assert resender.pick() == [(queued, "local")]


def test_a_failed_resend_is_tried_again_with_everything_due(
    make_archive: ArchiveFactory, clock: FakeClock
) -> None:
    archive = make_archive(
        SAFEKEEPER__TASKS__EXECUTOR="celery",
        SAFEKEEPER__TASKS__BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",  # nobody there
    )
    lost = _scheduled(archive, 2)
    clock.advance(seconds=archive.config.tasks.heartbeat_timeout.total_seconds() + 1)
    resender = Resender(archive, ["local"])
    with pytest.raises(BrokerUnavailable):
        resender.round()
    assert resender.resend_all, "the next round sends everything due, fresh tasks too"
    # And the tasks are not counted as sent: without that flag, they go again too.
    resender.resend_all = False
    assert [t for t, _ in resender.pick()] == lost


@pytest.fixture
def setup(
    tmp_path: Path, postgres_url: str, redis_url: str, seaweedfs_server: S3Server
) -> Iterator[tuple[Path, S3Server, str, dict[str, str]]]:
    bucket = seaweedfs_server.make_bucket()
    root = tmp_path / "deploy"
    root.mkdir()
    s3 = {
        "endpoint": seaweedfs_server.endpoint,
        "region": seaweedfs_server.region,
        "access_key_id": seaweedfs_server.access_key_id,
        "secret_access_key": seaweedfs_server.secret_access_key,
        "allow_http": True,
    }
    document = {
        "database": {"url": postgres_url},
        "tasks": {
            "executor": "celery",
            "broker_url": redis_url,
            "threads": 4,
            "heartbeat_timeout": "4s",
            "retry_base": "1s",
            "retry_max": "5s",
            "replicate_interval": "1h",
        },
        "sites": {"site-a": {"description": "ingest host"}, "site-b": {"description": "vault"}},
        "locations": {
            "inbox": {"kind": "source", "site": "site-a", "store": "file:inbox"},
            "archive": {
                "kind": "archive",
                "site": "site-b",
                "store": f"s3://{bucket}/{PREFIX}",
                "replicate_to": ["mirror"],
                **s3,
            },
            # Fed from the archive only: a second S3 store at site-b, so its transfers
            # are S3 to S3 and run on site-b's worker.
            "mirror": {
                "kind": "archive",
                "site": "site-b",
                "store": f"s3://{bucket}/{MIRROR_PREFIX}",
                **s3,
            },
        },
    }
    config = root / "safekeeper.toml"
    config.write_text(tomli_w.dumps(document))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFEKEEPER", "AWS_"))}
    yield config, seaweedfs_server, bucket, env


def _safekeeper(
    config: Path, env: dict[str, str], *args: str, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "safekeeper", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"safekeeper {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def _s3_sha256(server: S3Server, bucket: str, key: str) -> str:
    body = server.client().get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(8 * 1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _archive_copies(archive: Archive, location: str = "archive") -> list[tuple[str, str, bool]]:
    """(blob id, state, verified) of every live copy at ``location``."""
    with archive.db.read() as session:
        rows = session.execute(
            select(Blob.sha256, Copy.state, Copy.verified_at)
            .join(Copy, Copy.blob_id == Blob.id)
            .join(Location, Copy.location_id == Location.id)
            .where(Location.name == location, Copy.state != CopyState.DELETED)
        ).all()
    return [(sha, state, verified is not None) for sha, state, verified in rows]


def _transfer_task(archive: Archive, sha256: str) -> Task | None:
    """The transfer of ``sha256`` to the archive."""
    with archive.db.read() as session:
        return session.scalar(
            select(Task)
            .join(Copy, Task.copy_id == Copy.id)
            .join(Blob, Copy.blob_id == Blob.id)
            .join(Location, Copy.location_id == Location.id)
            .where(Blob.sha256 == sha256, Task.kind == "transfer", Location.name == "archive")
        )


def _transfers_to(archive: Archive, location: str) -> list[tuple[str, str, str, str]]:
    """(blob id, state, site, source location) of every transfer to ``location``."""
    target, source = aliased(Copy), aliased(Copy)
    with archive.db.read() as session:
        rows = session.execute(
            select(Blob.sha256, Task.state, Task.site, Location.name)
            .join(target, Task.copy_id == target.id)
            .join(Blob, target.blob_id == Blob.id)
            .join(source, Task.source_copy_id == source.id)
            .join(Location, source.location_id == Location.id)
            .where(
                Task.kind == "transfer",
                target.location_id
                == select(Location.id).where(Location.name == location).scalar_subquery(),
            )
        ).all()
    return sorted((sha, state, site, name) for sha, state, site, name in rows)


def _uploads(server: S3Server, bucket: str) -> list[str]:
    """The keys of the bucket's incomplete multipart uploads."""
    listing = server.client().list_multipart_uploads(Bucket=bucket)
    return sorted(upload["Key"] for upload in listing.get("Uploads", []))


def _wait_for_upload(server: S3Server, bucket: str, key: str, workers: Workers) -> None:
    deadline = time.monotonic() + 30
    while key not in _uploads(server, bucket):
        if time.monotonic() > deadline:
            pytest.fail(f"no multipart upload of {key} began\n" + workers.tails())
        workers.check_alive()
        time.sleep(0.02)


def _wait_for(
    archive: Archive, sha256: str, states: set[str], timeout: float, workers: Workers
) -> Task:
    deadline = time.monotonic() + timeout
    while True:
        task = _transfer_task(archive, sha256)
        if task is not None and task.state in states:
            return task
        if time.monotonic() > deadline:
            pytest.fail(
                f"task {task and task.id} not in {states}: {task and task.state}\n"
                + workers.tails()
            )
        workers.check_alive()
        time.sleep(0.02)


def _make_big_file(path: Path, size: int) -> str:
    """Write ``size`` bytes quickly: a random block repeated, each copy numbered."""
    block = os.urandom(4 * 1024 * 1024)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for index in range(size // len(block)):
            chunk = index.to_bytes(8, "big") + block[8:]
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.s3
def test_two_sites_replicate_and_survive_a_killed_worker(
    setup: tuple[Path, S3Server, str, dict[str, str]], tmp_path: Path
) -> None:
    config, server, bucket, env = setup
    logs = tmp_path / "logs"
    logs.mkdir()
    # Create the schema and the catalog once, before several processes race to.
    archive = Archive(load_config(config, environ={}))
    workers = Workers(config, logs, env)
    try:
        workers.start("site-a")
        workers.start("site-b")
        workers.wait_ready("site-a")
        workers.wait_ready("site-b")

        # -- part one: replicate a batch of small files across the sites --------------
        files = tmp_path / "files"
        files.mkdir()
        expected = set()
        for i in range(SMALL_FILES):
            data = os.urandom(1000 + i * 9000)
            (files / f"file-{i:02d}.bin").write_bytes(data)
            expected.add(hashlib.sha256(data).hexdigest())
        _safekeeper(config, env, "put", str(files))
        out = _safekeeper(config, env, "replicate", "--wait").stdout
        assert f"{SMALL_FILES} transfers scheduled" in out
        assert f"{SMALL_FILES} done" in out
        workers.check_alive()

        copies = _archive_copies(archive)
        assert sorted(copies) == sorted((sha, CopyState.PRESENT, True) for sha in expected)
        listing = server.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")
        keys = {item["Key"] for item in listing.get("Contents", [])}
        # The objects, and the store's identity marker beside them.
        assert keys == {f"{PREFIX}/{sha}" for sha in expected} | {f"{PREFIX}/{MARKER_NAME}"}
        for sha in expected:
            assert _s3_sha256(server, bucket, f"{PREFIX}/{sha}") == sha

        # The archive's replicate_to: the next pass copies them on, S3 to S3, at site-b.
        out = _safekeeper(config, env, "replicate", "--wait").stdout
        assert f"{SMALL_FILES} transfers scheduled" in out
        assert f"{SMALL_FILES} done" in out
        # From the archive's copy, not the inbox's: S3 to S3, run by site-b's worker.
        assert _transfers_to(archive, "mirror") == sorted(
            (sha, TaskState.DONE, "site-b", "archive") for sha in expected
        )
        mirrored = _archive_copies(archive, "mirror")
        assert sorted(mirrored) == sorted((sha, CopyState.PRESENT, True) for sha in expected)
        for sha in expected:
            assert _s3_sha256(server, bucket, f"{MIRROR_PREFIX}/{sha}") == sha

        # -- part two: SIGKILL the worker in the middle of a large transfer ------------
        big = tmp_path / "big.bin"
        big_sha = _make_big_file(big, BIG_SIZE)
        _safekeeper(config, env, "put", str(big))
        _safekeeper(config, env, "replicate")
        running = _wait_for(archive, big_sha, {TaskState.RUNNING}, 60, workers)
        assert running.site == "site-a", "a local-disk source is pushed by its own site"
        assert running.attempts == 1
        # Killed once its multipart upload has begun: the kill leaves that upload behind.
        _wait_for_upload(server, bucket, f"{PREFIX}/{big_sha}", workers)
        workers.processes["site-a"].send_signal(signal.SIGKILL)
        workers.processes["site-a"].wait(timeout=10)
        after_kill = _transfer_task(archive, big_sha)
        assert after_kill is not None
        assert after_kill.state == TaskState.RUNNING, (
            "the transfer ended before the worker was killed; make BIG_SIZE larger"
        )
        assert after_kill.claimed_by == running.claimed_by
        workers.start("site-a")

        done = _wait_for(
            archive, big_sha, {TaskState.DONE, TaskState.FAILED}, RECOVERY_TIMEOUT, workers
        )
        assert done.state == TaskState.DONE, done.last_error
        assert done.attempts == 2, "claimed by the killed worker, then re-claimed exactly once"
        assert done.claimed_by != running.claimed_by
        big_copies = [c for c in _archive_copies(archive) if c[0] == big_sha]
        assert big_copies == [(big_sha, CopyState.PRESENT, True)]
        with archive.db.read() as session:
            tasks_for_blob = session.scalars(
                select(Task.id)
                .join(Copy, Task.copy_id == Copy.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Blob.sha256 == big_sha)
            ).all()
        assert tasks_for_blob == [done.id]
        assert _s3_sha256(server, bucket, f"{PREFIX}/{big_sha}") == big_sha

        # -- the large object on to the mirror: S3 to S3, larger than one PUT ----------
        out = _safekeeper(config, env, "replicate", "--wait").stdout
        assert "1 transfer scheduled" in out
        assert "1 done" in out
        assert (big_sha, TaskState.DONE, "site-b", "archive") in _transfers_to(archive, "mirror")
        assert [c for c in _archive_copies(archive, "mirror") if c[0] == big_sha] == [
            (big_sha, CopyState.PRESENT, True)
        ]
        assert _s3_sha256(server, bucket, f"{MIRROR_PREFIX}/{big_sha}") == big_sha
        workers.check_alive()

        # -- verify the archive: its copies intact, the killed upload aborted ----------
        # Only the killed attempt's upload is left: the finished ones left none. (So
        # verifying the archive alone is enough, and spares re-hashing the big object
        # at the inbox and the mirror, both just checked.)
        leftovers = _uploads(server, bucket)
        assert leftovers and set(leftovers) == {f"{PREFIX}/{big_sha}"}
        out = _safekeeper(
            config, env, "verify", "--location", "archive", "--stale-uploads-after", "0s"
        ).stdout
        total = SMALL_FILES + 1
        assert f"checked {total}: {total} ok, 0 missing, 0 corrupt" in out
        assert f"aborted {len(leftovers)} stale incomplete upload" in out
        assert f"aborted  archive/{big_sha}" in out
        assert _uploads(server, bucket) == []
    finally:
        workers.stop_all()
        archive.close()

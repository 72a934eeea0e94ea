"""``safekeeper status``: workers with heartbeat and configuration, queues, stores; and a
task from a newer configuration is retried, not failed for good (issue 15)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

from typer.testing import CliRunner

from safekeeper.archive import Archive
from safekeeper.cli import app
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Task, TaskState
from safekeeper.engine.runner import run_task
from safekeeper.engine.worker import embedded_loop
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.operations.status import config_fingerprint, report_alive, system_status
from tests.conftest import ArchiveFactory, FakeClock

EXTRA_LOCATION = {
    "SAFEKEEPER__LOCATIONS__EXTRA__KIND": "archive",
    "SAFEKEEPER__LOCATIONS__EXTRA__SITE": "local",
    "SAFEKEEPER__LOCATIONS__EXTRA__STORE": "file:extra",
    "SAFEKEEPER__POLICY__MIN_ARCHIVE_COPIES": "2",
}


def test_status_shows_workers_configs_and_staleness(
    make_archive: ArchiveFactory, clock: FakeClock
) -> None:
    archive = make_archive()
    newer = make_archive(**EXTRA_LOCATION)
    assert config_fingerprint(archive.config) != config_fingerprint(newer.config)
    report_alive(archive, "w-old", "worker", ["local"])
    report_alive(newer, "w-new", "worker", ["local"])
    report = system_status(archive)
    by_name = {w.name: w for w in report.workers}
    assert by_name["w-old"].same_config and not by_name["w-new"].same_config
    assert not any(w.stale for w in report.workers)
    assert all(store.ok for store in report.stores)
    assert report.healthy

    clock.advance(seconds=31)
    report_alive(archive, "w-old", "worker", ["local"])  # w-new has gone quiet
    report = system_status(archive)
    assert {w.name for w in report.workers if w.stale} == {"w-new"}
    assert not report.healthy


def test_the_listener_settings_are_not_part_of_the_fingerprint(
    make_archive: ArchiveFactory,
) -> None:
    """``serve --port`` changes the server's settings; its workers still agree with it."""
    archive = make_archive()
    served = archive.config.server.model_copy(update={"port": 9999})
    assert config_fingerprint(archive.config) == config_fingerprint(
        archive.config.model_copy(update={"server": served})
    )


def test_running_tasks_are_listed_with_their_age(archive: Archive, clock: FakeClock) -> None:
    archive.put_bytes(b"running")
    (task_id,) = replication_pass(archive).task_ids
    with archive.db.write() as session:
        assert task_rows.claim(session, task_id, "w-1", clock(), timedelta(minutes=1))
    clock.advance(seconds=7)
    (running,) = system_status(archive).running
    assert (running.id, running.kind, running.claimed_by) == (task_id, "transfer", "w-1")
    assert running.age == running.heartbeat_age == 7.0


def test_status_command_exit_code(make_archive: ArchiveFactory) -> None:
    archive = make_archive()
    data_dir = str(archive.config.data_dir)
    runner = CliRunner()
    healthy = runner.invoke(app, ["--data-dir", data_dir, "status", "--json"])
    assert healthy.exit_code == 0, healthy.output
    assert json.loads(healthy.output)["healthy"] is True
    # Reported at the test clock's time: months ago by the real clock the CLI reads.
    report_alive(archive, "w-1", "worker", ["local"])
    stale = runner.invoke(app, ["--data-dir", data_dir, "status"])
    assert stale.exit_code == 1
    assert "stale" in stale.output and "needs attention" in stale.output


def test_an_interval_store_is_healthy(make_archive: ArchiveFactory) -> None:
    """The reachability probe uses a key the layout accepts: an interval store, which
    takes blob serials, is not reported broken for refusing a hash key."""
    archive = make_archive(
        SAFEKEEPER__LOCATIONS__TAPE__KIND="archive",
        SAFEKEEPER__LOCATIONS__TAPE__STORE="file:tape",
        SAFEKEEPER__LOCATIONS__TAPE__LAYOUT="interval",
    )
    archive.put_bytes(b"serial one", ref="docs:one")
    stores = {store.location: store for store in system_status(archive).stores}
    assert stores["tape"].ok, stores["tape"].detail
    assert system_status(archive).healthy


def test_embedded_worker_reports_itself(archive: Archive) -> None:
    stop = threading.Event()
    loop = threading.Thread(target=embedded_loop, args=(archive, ["local"], stop))
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while not system_status(archive).workers and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(30)
    (worker,) = system_status(archive).workers
    assert worker.role == "worker" and worker.sites == ["local"] and worker.same_config


def test_task_from_a_newer_configuration_is_retried_not_failed(
    make_archive: ArchiveFactory,
) -> None:
    newer = make_archive(**EXTRA_LOCATION)
    newer.put_bytes(b"needs two archive copies")
    task_ids = replication_pass(newer).task_ids
    older = make_archive()  # a worker started before "extra" was added
    states = {task_id: run_task(older, task_id) for task_id in task_ids}
    assert TaskState.QUEUED in states.values(), states
    with older.db.read() as session:
        queued = [session.get_one(Task, t) for t, s in states.items() if s == TaskState.QUEUED]
    assert queued and all(
        "not in this worker's configuration" in (t.last_error or "") for t in queued
    )
    assert TaskState.FAILED not in states.values()

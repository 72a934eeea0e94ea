"""Health checks that notice a dead database, and /metrics parsed as Prometheus does."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from safekeeper.archive import Archive
from safekeeper.engine.embedded import run_due
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.deletion.gc import run_gc
from tests.conftest import ArchiveFactory, FakeClock
from tests.util import free_port


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_copies_and_tasks(client: TestClient, app_archive: Archive) -> None:
    app_archive.put_bytes(b"a" * 1000)
    app_archive.put_bytes(b"b" * 24)
    replication_pass(app_archive)  # two transfers queued for the archive location
    samples = _samples(client)
    assert samples[("safekeeper_database_up", ())] == 1
    inbox = (("location", "inbox"), ("state", "present"))
    assert samples[("safekeeper_copies", inbox)] == 2
    assert samples[("safekeeper_copy_bytes", inbox)] == 1024
    pending = (("location", "archive"), ("state", "pending"))
    assert samples[("safekeeper_copies", pending)] == 2
    assert samples[("safekeeper_tasks", (("site", "local"), ("state", "queued")))] == 2
    assert ("safekeeper_oldest_queued_task_age_seconds", (("site", "local"),)) in samples
    # The process's own metrics come along (prometheus_client's default collectors).
    assert any(name.startswith("process_") or name.startswith("python_") for name, _ in samples)


def test_metrics_count_finished_tasks_and_deletions(
    client: TestClient, app_archive: Archive, clock: FakeClock
) -> None:
    done = ("safekeeper_tasks_finished_total", (("kind", "transfer"), ("state", "done")))
    deleted = ("safekeeper_deletions_total", (("location", "inbox"),))
    before = _samples(client)
    assert done not in before  # nothing has finished yet
    assert deleted not in before
    app_archive.put_bytes(b"a" * 100, ref="proj:a")
    app_archive.put_bytes(b"b" * 100, ref="proj:b")
    replication_pass(app_archive)
    queued = _samples(client)
    assert not [labels for name, labels in queued if name == "safekeeper_tasks_finished_total"]
    run_due(app_archive)  # both transfers to the archive location run
    after_transfer = _samples(client)
    assert after_transfer[done] == 2
    assert deleted not in after_transfer
    clock.advance(days=1)  # past the inbox's retention: gc removes the inbox copies
    assert run_gc(app_archive).deleted == 2
    after_gc = _samples(client)
    assert after_gc[deleted] == 2
    assert after_gc[done] == 2  # run_gc runs in-process, it queues no task
    # Counters, typed so: rate() applies.
    types = {
        family.name: family.type
        for family in text_string_to_metric_families(client.get("/metrics").text)
    }
    assert types["safekeeper_tasks_finished"] == "counter"
    assert types["safekeeper_deletions"] == "counter"


def test_health_fails_when_the_database_is_unreachable(
    client: TestClient, app_archive: Archive
) -> None:
    assert client.get("/api/health/live").json() == {"status": "ok"}
    assert client.get("/api/health/ready").status_code == 200
    assert client.get("/api/health").status_code == 200
    working = app_archive.db.engine
    app_archive.db.engine = create_engine(  # a database server that is not there
        f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/gone",
        connect_args={"connect_timeout": 2},
    )
    try:
        for path in ("/api/health/ready", "/api/health"):
            response = client.get(path)
            assert response.status_code == 503
            assert response.json()["code"] == "database_unavailable"
        assert client.get("/api/health/live").status_code == 200
        assert _samples(client)[("safekeeper_database_up", ())] == 0
    finally:
        app_archive.db.engine.dispose()
        app_archive.db.engine = working


def _request_count(client: TestClient, method: str, route: str, status: str) -> float:
    key = (
        "safekeeper_http_request_duration_seconds_count",
        (("method", method), ("route", route), ("status", status)),
    )
    return _samples(client).get(key, 0.0)


def test_request_latency_by_route_template(client: TestClient) -> None:
    route = "/api/blobs/{blob}"
    before = _request_count(client, "GET", route, "4xx")
    unmatched = _request_count(client, "GET", "unmatched", "4xx")
    for sha in ("0" * 64, "1" * 64, "2" * 64):
        assert client.get(f"/api/blobs/{sha}").status_code in (401, 404)
    assert client.get("/no/such/route/at/all").status_code == 404
    samples = _samples(client)
    # One series for the template, not one per blob; unknown paths share one label.
    assert _request_count(client, "GET", route, "4xx") == before + 3
    assert _request_count(client, "GET", "unmatched", "4xx") == unmatched + 1
    assert not [labels for name, labels in samples if "0" * 64 in str(labels)]
    live = _request_count(client, "GET", "/api/health/live", "2xx")
    client.get("/api/health/live")
    assert _request_count(client, "GET", "/api/health/live", "2xx") == live + 1
    # The method is client-chosen text: unknown ones share one label.
    other = _request_count(client, "other", "/api/health/live", "4xx")
    assert client.request("BREW", "/api/health/live").status_code == 405
    assert _request_count(client, "other", "/api/health/live", "4xx") == other + 1


def _worker(data_dir: Path, *options: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    return subprocess.Popen(
        [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "worker", *options],
        env=environ, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_worker_serves_metrics_on_its_port(make_archive: ArchiveFactory, data_dir: Path) -> None:
    archive = make_archive()
    archive.put_bytes(b"w" * 500, ref="proj:w")
    port = free_port()
    worker = _worker(data_dir, "--metrics-port", str(port))
    done = ("safekeeper_tasks_finished_total", (("kind", "transfer"), ("state", "done")))
    try:
        deadline = time.monotonic() + 60
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while samples.get(done) != 1:  # the worker's replication pass, then the transfer
            if worker.poll() is not None or time.monotonic() > deadline:
                worker.terminate()
                pytest.fail(f"no transfer done on :{port}: {samples}\n{worker.communicate()[1]}")
            with contextlib.suppress(OSError):  # not listening yet
                samples = _scrape(port)
            time.sleep(0.2)
        assert samples[("safekeeper_database_up", ())] == 1
        present = (("location", "archive"), ("state", "present"))
        assert samples[("safekeeper_copy_bytes", present)] == 500
        assert any(name.startswith("process_") for name, _ in samples)  # its own metrics
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_worker_metrics_port_taken_is_one_error_line(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = _worker(data_dir, "--metrics-port", str(port))
        _out, err = worker.communicate(timeout=60)
    assert worker.returncode != 0
    assert err.startswith(f"error: --metrics-port: cannot listen on 127.0.0.1:{port}")
    assert err.count("\n") == 1  # one line, no traceback

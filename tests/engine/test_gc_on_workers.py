"""gc started through the API runs on the sites' Celery workers (issue 15).

Two sites with real processes: PostgreSQL, Redis (the broker), SeaweedFS (S3) and one
``safekeeper worker`` per site. The API app runs in the test process on a copy of the
configuration whose S3 secret is wrong: like an API host without access to the
sites' stores, it cannot read or delete a single object. ``POST /api/gc`` must still
delete every copy the plan allows — through the workers, archive copies last — and
``GET /api/gc/{id}`` shows the batches and the deletions as they happen.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from fastapi.testclient import TestClient
from sqlalchemy import select

from safekeeper.api.app import create_app
from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Task
from safekeeper.errors import StoreError
from safekeeper.services.operations import audit
from safekeeper.stores.marker import MARKER_NAME
from tests.api.accounts import add_accounts
from tests.engine.test_distributed import Workers, _archive_copies
from tests.servers import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.s3]

TIMEOUT = 90.0


@pytest.fixture
def deployment(
    tmp_path: Path, postgres_url: str, redis_url: str, seaweedfs_server: S3Server
) -> Iterator[tuple[dict[str, Any], S3Server, str]]:
    bucket = seaweedfs_server.make_bucket()
    credentials = {
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
            "threads": 2,
            "heartbeat_timeout": "4s",
            "retry_base": "1s",
            "retry_max": "5s",
            "replicate_interval": "1h",
        },
        "policy": {"grace_period": "1s", "ingest_location": "inbox"},
        "sites": {"site-a": {"description": "ingest"}, "site-b": {"description": "vault"}},
        "locations": {
            "inbox": {
                "kind": "source",
                "site": "site-a",
                "store": f"s3://{bucket}/inbox",
                **credentials,
            },
            "archive": {
                "kind": "archive",
                "site": "site-b",
                "store": f"s3://{bucket}/vault",
                **credentials,
            },
        },
    }
    yield document, seaweedfs_server, bucket


def _write(root: Path, document: dict[str, Any]) -> Path:
    root.mkdir()
    path = root / "safekeeper.toml"
    path.write_text(tomli_w.dumps(document))
    return path


def _keys(server: S3Server, bucket: str, prefix: str) -> set[str]:
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    return {item["Key"].removeprefix(f"{prefix}/") for item in listing.get("Contents", [])}


def test_gc_via_the_api_deletes_on_the_workers_not_in_the_api_process(
    deployment: tuple[dict[str, Any], S3Server, str], tmp_path: Path
) -> None:
    document, server, bucket = deployment
    config = _write(tmp_path / "sites", document)
    # The API host: the same catalog and broker, but no access to the sites' stores.
    api_document = copy.deepcopy(document)
    for location in api_document["locations"].values():
        location["secret_access_key"] = "not-the-secret"
    api_config = _write(tmp_path / "api", api_document)

    site_archive = Archive(load_config(config, environ={}))
    api_archive = Archive(load_config(api_config, environ={}))
    garbage = [site_archive.put_bytes(os.urandom(2000)).sha256 for _ in range(2)]
    kept = site_archive.put_bytes(os.urandom(3000), ref="course:kept").sha256
    accounts = add_accounts(api_archive)

    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFEKEEPER", "AWS_"))}
    workers = Workers(config, logs, env)
    try:
        for site in ("site-a", "site-b"):
            workers.start(site)
        for site in ("site-a", "site-b"):
            workers.wait_ready(site)
        # The workers' start-up replication passes copy all three to the archive.
        deadline = time.monotonic() + TIMEOUT
        while sorted(_archive_copies(site_archive)) != sorted(
            (sha, "present", True) for sha in [*garbage, kept]
        ):
            workers.check_alive()
            assert time.monotonic() < deadline, workers.tails()
            time.sleep(0.1)
        time.sleep(1.2)  # past the grace period: the unreferenced blobs are garbage

        with TestClient(create_app(api_archive), base_url="http://127.0.0.1") as client:
            auth = accounts.headers("ops")
            started = client.post("/api/gc", headers=auth)
            assert started.status_code == 202, started.text
            run = started.json()
            assert run["planned"] == 5 and run["phase"] == "others"  # archive copies wait
            while run["running"]:
                workers.check_alive()
                assert time.monotonic() < deadline + TIMEOUT, (run, workers.tails())
                time.sleep(0.1)
                run = client.get(f"/api/gc/{run['id']}", headers=auth).json()
        assert run["error"] is None and run["failures"] == [], run
        # Three inbox copies, then (archive copies last) the garbage's two.
        assert run["batches"] == {"queued": 0, "running": 0, "done": 2, "failed": 0, "cancelled": 0}
        assert (run["processed"], run["deleted"]) == (5, 5)
        assert run["bytes_freed"] == 2 * 2000 + 3000 + 2 * 2000
        assert run["phase"] == "ended"

        # The bytes are gone from the stores; what is referenced stays archived.
        assert _keys(server, bucket, "inbox") == {MARKER_NAME}
        assert _keys(server, bucket, "vault") == {MARKER_NAME, kept}
        entries = audit.read_audit(site_archive)
        assert sorted((e.blob, e.location, e.actor) for e in entries) == sorted(
            [(sha, "inbox", "api:ops") for sha in [*garbage, kept]]
            + [(sha, "archive", "api:ops") for sha in garbage]
        )
        # Each batch was claimed and run by a worker process, never by this one; the
        # archive batch was queued only once the inbox batch had ended.
        with site_archive.db.read() as session:
            batches = session.scalars(select(Task).where(Task.kind == "gc").order_by(Task.id))
            (inbox_batch, archive_batch) = [(t.created_at, t.finished_at) for t in batches]
            runners = session.scalars(select(Task.claimed_by).where(Task.kind == "gc")).all()
        assert inbox_batch[1] is not None and archive_batch[0] >= inbox_batch[1]
        worker_pids = {str(p.pid) for p in workers.processes.values()}
        assert len(runners) == 2 and all(runners)
        assert {str(name).split(":")[1] for name in runners} <= worker_pids
        # The premise: the API side's configuration cannot reach the stores at all.
        with pytest.raises(StoreError):
            api_archive.store("inbox", fresh=True)
        workers.check_alive()
    finally:
        workers.stop_all()
        api_archive.close()
        site_archive.close()

"""``safekeeper serve`` also runs the embedded executor's work: replication happens
with nothing but the server running (unless ``--no-worker``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from safekeeper.archive import Archive
from safekeeper.config import load_config, write_default
from safekeeper.services.copies import inventory
from tests.util import free_port

pytestmark = pytest.mark.slow


@contextmanager
def _serving(data_dir: Path, *flags: str) -> Iterator[None]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    environ["SAFEKEEPER__TASKS__REPLICATE_INTERVAL"] = "1s"
    log = data_dir.parent / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "serve",
             "--port", str(port), *flags],
            stdout=out, stderr=subprocess.STDOUT, env=environ,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"safekeeper serve did not come up:\n{log.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0, log.read_text()


def _locations(data_dir: Path, sha256: str) -> dict[str, str]:
    with Archive(load_config(data_dir=data_dir, environ={})) as archive:
        return {c.location: c.state for c in inventory.stat_blob(archive, sha256).copies}


def _inbox_only_blob(data_dir: Path) -> str:
    write_default(data_dir)
    with Archive(load_config(data_dir=data_dir, environ={})) as archive:
        return archive.put_bytes(b"replicate me", ref="docs:note").sha256


def test_the_server_replicates_by_itself(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    blob = _inbox_only_blob(data_dir)
    assert _locations(data_dir, blob) == {"inbox": "present"}
    with _serving(data_dir):
        deadline = time.monotonic() + 30
        while _locations(data_dir, blob).get("archive") != "present":
            assert time.monotonic() < deadline, _locations(data_dir, blob)
            time.sleep(0.2)


def test_no_worker_leaves_replication_to_a_worker(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    blob = _inbox_only_blob(data_dir)
    with _serving(data_dir, "--no-worker"):
        time.sleep(3)  # three replication intervals
        assert _locations(data_dir, blob) == {"inbox": "present"}

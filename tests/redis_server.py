"""A private Redis server for the tests (the Celery broker): started once per session
on a free loopback port, without persistence, and stopped at the end.

Under CI (CI=true) a missing ``redis-server`` fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.util import free_port, unavailable

STARTUP_TIMEOUT = 30.0


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Yield ``redis://127.0.0.1:PORT/0`` for a fresh ``redis-server``."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server not found; install redis (apt-get install redis-server)")
    base = Path(tempfile.mkdtemp(prefix="safekeeper-redis-"))
    port = free_port()
    log_path = base / "redis.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(base),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                unavailable(f"redis-server did not start; log tail:\n{tail}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)

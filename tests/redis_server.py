"""A private Redis server for the tests (the Celery broker), on a free loopback port,
without persistence: ``redis_url`` is one server for the session; ``redis_server`` a
server of the test's own, which it may stop and start again (same port, now empty).

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


class RedisServer:
    """One ``redis-server`` process on a fixed port, which can be stopped and started."""

    def __init__(self, binary: str, base: Path) -> None:
        self.binary, self.base = binary, base
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = base / "redis.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.base),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                unavailable(f"redis-server did not start; log tail:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server not found; install redis (apt-get install redis-server)")
    base = Path(tempfile.mkdtemp(prefix="safekeeper-redis-"))
    server = RedisServer(binary, base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Yield ``redis://127.0.0.1:PORT/0`` for a fresh ``redis-server``."""
    for server in _redis_server():
        yield server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` of this test's own, to stop and start."""
    yield from _redis_server()

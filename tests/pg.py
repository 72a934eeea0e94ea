"""A private PostgreSQL server for the tests: started on loopback, stopped at the end.

Set SAFEKEEPER_TEST_POSTGRES_URL to use a server you run yourself instead.
Under CI (CI=true) a server that cannot start fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from tests.util import free_port, unavailable


def _pg_bindir() -> Path | None:
    if shutil.which("pg_config"):
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if bindir and (Path(bindir) / "initdb").exists():
            return Path(bindir)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _as_user(user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--"] if user else []


class PgCluster:
    """A fresh PostgreSQL cluster in a temporary directory, on a fixed loopback port;
    its server can be stopped and started again."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            unavailable("PostgreSQL server binaries (initdb) not found; install postgresql")
        self.bindir = bindir
        # PostgreSQL refuses to run as root: run it as the 'postgres' user when we are root.
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no 'postgres' user to run the server")
            self.user = "postgres"
        self.base = Path(tempfile.mkdtemp(prefix="safekeeper-pg-"))
        self.data, self.sockets = self.base / "data", self.base / "sock"
        self.sockets.mkdir()
        if self.user:
            shutil.chown(self.base, self.user)
            shutil.chown(self.sockets, self.user)
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.server: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [
                *_as_user(self.user),
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        with open(self.base / "server.log", "ab") as log:
            self.server = subprocess.Popen(
                [
                    *_as_user(self.user),
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.sockets),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        engine = sqlalchemy.create_engine(self.url)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with engine.connect():
                        break
                except sqlalchemy.exc.OperationalError:
                    if self.server.poll() is not None or time.monotonic() > deadline:
                        unavailable(
                            f"PostgreSQL did not start: {(self.base / 'server.log').read_text()}"
                        )
                    time.sleep(0.1)
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop the server the way an administrator does (``pg_ctl stop -m fast``):
        sessions are terminated, then it shuts down."""
        server, self.server = self.server, None
        if server is None or server.poll() is not None:
            return
        # pg_ctl, not a signal to the process we started: that may be runuser, which
        # would turn it into SIGTERM then SIGKILL.
        pg_ctl = [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast"]
        subprocess.run(
            [*_as_user(self.user), *pg_ctl, "-w", "-t", "30"],
            check=False,
            capture_output=True,
        )
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL for a superuser on a fresh PostgreSQL cluster."""
    if url := os.environ.get("SAFEKEEPER_TEST_POSTGRES_URL"):
        yield url
        return
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture
def postgres_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test's own, to stop and start."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

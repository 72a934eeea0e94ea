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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL for a superuser on a fresh PostgreSQL cluster."""
    if url := os.environ.get("SAFEKEEPER_TEST_POSTGRES_URL"):
        yield url
        return
    bindir = _pg_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries (initdb) not found; install postgresql")
    # PostgreSQL refuses to run as root: run it as the 'postgres' user when we are root.
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no 'postgres' user to run the server")
        user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="safekeeper-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    if user:
        shutil.chown(base, user)
        shutil.chown(sockets, user)
    port = free_port()
    subprocess.run(
        [
            *_as_user(user),
            str(bindir / "initdb"),
            "-D",
            str(data),
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
    log = open(base / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            *_as_user(user),
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(sockets),
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
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    engine = sqlalchemy.create_engine(url)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with engine.connect():
                    break
            except sqlalchemy.exc.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    unavailable(f"PostgreSQL did not start: {(base / 'server.log').read_text()}")
                time.sleep(0.1)
        yield url
    finally:
        engine.dispose()
        server.terminate()
        server.wait(timeout=30)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


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

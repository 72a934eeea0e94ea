"""Several safekeeper processes starting together on an empty database all succeed.

Real processes, released at once by a shared start file: each opens the archive
(catalog migrations + catalog sync) and the sessions schema, as `db upgrade` does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy

from safekeeper import migrations, migrations_sessions
from safekeeper.config import default_document, write_default

PROCESSES = 6

STARTER = """
import os, sys, time
from pathlib import Path
from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.engine import SESSIONS, current_revision
import alembic.command, psycopg  # imported before the start, so the starts coincide
gun = Path(sys.argv[1])
while not gun.exists():
    time.sleep(0.002)
archive = Archive(load_config(data_dir=Path(sys.argv[2])))
print("catalog at revision", current_revision(archive.db.engine))
print("sessions at revision", current_revision(archive.sessions_db.engine, SESSIONS))
archive.close()
"""


def _start_together(data_dir: Path, tmp_path: Path, database_url: str) -> list[tuple[int, str]]:
    gun = tmp_path / "go"
    env = {"SAFEKEEPER_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(gun), str(data_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    time.sleep(3)  # every child imported and is polling for the start file
    gun.touch()
    results = []
    for child in children:
        output, _ = child.communicate(timeout=120)
        results.append((child.returncode, output))
    return results


def _check_all_started(results: list[tuple[int, str]]) -> None:
    failures = [output for code, output in results if code != 0]
    assert failures == [], failures[0]
    for _code, output in results:
        assert f"at revision {migrations.HEAD}" in output
        assert f"at revision {migrations_sessions.HEAD}" in output


@pytest.mark.postgres
@pytest.mark.slow
def test_processes_starting_together_on_fresh_postgres(tmp_path: Path, postgres_url: str) -> None:
    data_dir = tmp_path / "data"
    write_default(data_dir)
    _check_all_started(_start_together(data_dir, tmp_path, postgres_url))
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:
        locations = connection.exec_driver_sql("SELECT count(*) FROM locations").scalar()
        assert locations == len(default_document()["locations"])
        assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
        versions = connection.exec_driver_sql("SELECT count(*) FROM alembic_version_sessions")
        assert versions.scalar() == 1
    engine.dispose()


def test_db_upgrade_migrates_both_schemas(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_default(data_dir)
    done = subprocess.run(
        [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "db", "upgrade"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"at revision {migrations.HEAD}" in done.stdout
    assert f"at revision {migrations_sessions.HEAD}" in done.stdout
    assert (data_dir / "sessions.db").exists()


@pytest.mark.slow
def test_processes_starting_together_on_fresh_sqlite(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_default(data_dir)
    url = f"sqlite:///{data_dir / 'catalog.db'}"
    _check_all_started(_start_together(data_dir, tmp_path, url))

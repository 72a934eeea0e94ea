"""The Django adapters in a small real project (tests/contrib/django_project), run by
Django's own test runner in a subprocess: on SQLite, and with both Django's tables and
safekeeper's catalog on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from safekeeper.config import write_default

ROOT = Path(__file__).resolve().parents[2]


def _run_django_tests(tmp_path: Path, env: dict[str, str]) -> None:
    data_dir = tmp_path / "data"
    write_default(data_dir)
    command = [
        sys.executable,
        "-m",
        "django",
        "test",
        "tests.contrib.django_project.djapp",
        "--settings=tests.contrib.django_project.settings",
        "--noinput",
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "SAFEKEEPER_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Ran 13 tests" in done.stderr


@pytest.mark.slow
def test_django_project_on_sqlite(tmp_path: Path) -> None:
    _run_django_tests(tmp_path, {})


@pytest.mark.slow
@pytest.mark.postgres
def test_django_project_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    _run_django_tests(
        tmp_path, {"DJANGO_DATABASE_URL": postgres_url, "SAFEKEEPER_DATABASE_URL": postgres_url}
    )

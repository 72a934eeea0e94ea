"""Shared fixtures: archives on a temporary data directory, on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safekeeper.archive import Archive
from safekeeper.config import load_config, write_default

pytest_plugins = ["tests.pg", "tests.servers", "tests.redis_server"]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    write_default(directory)
    return directory


ArchiveFactory = Callable[..., Archive]


@pytest.fixture
def make_archive(data_dir: Path, clock: FakeClock) -> Iterator[ArchiveFactory]:
    opened: list[Archive] = []

    def factory(database_url: str | None = None, **env: str) -> Archive:
        environ = dict(env)
        if database_url:
            environ["SAFEKEEPER_DATABASE_URL"] = database_url
        archive = Archive(load_config(data_dir=data_dir, environ=environ), clock=clock)
        opened.append(archive)
        return archive

    yield factory
    for archive in opened:
        archive.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def archive(request: pytest.FixtureRequest, make_archive: ArchiveFactory) -> Archive:
    """An archive with the default config, on SQLite and again on PostgreSQL."""
    if request.param == "postgresql":
        return make_archive(request.getfixturevalue("postgres_url"))
    return make_archive()

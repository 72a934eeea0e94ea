"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from safekeeper.db.engine import Database, current_revision
from safekeeper.db.models import Base


def _check_matches_models(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    tables = set(inspect(database.engine).get_table_names())
    assert {"blobs", "copies", "locations", "sites", "refs", "namespaces", "audit_log"} <= tables


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    _check_matches_models(database)
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    database.close()


@pytest.mark.postgres
def test_postgres_schema_matches_models(postgres_url: str) -> None:
    database = Database(postgres_url)
    _check_matches_models(database)
    database.close()


def test_reopening_is_a_no_op(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = Database(url)
    revision = current_revision(first.engine)
    first.close()
    second = Database(url)
    assert revision is not None
    assert current_revision(second.engine) == revision
    second.close()


def test_head_constant_names_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    from safekeeper.db.engine import MIGRATIONS
    from safekeeper.migrations import HEAD

    assert ScriptDirectory(MIGRATIONS).get_current_head() == HEAD

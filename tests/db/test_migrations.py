"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from safekeeper.db.engine import CATALOG, SESSIONS, Database, Schema, current_revision
from safekeeper.db.models import Base
from safekeeper.db.session_models import SessionBase


def _differences(database: Database, metadata: MetaData) -> list[object]:
    def own_tables(name: str | None, type_: str, _parent: object) -> bool:
        return type_ != "table" or name in metadata.tables

    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": own_tables})
        return list(compare_metadata(context, metadata))


def _check_matches_models(database: Database) -> None:
    assert _differences(database, Base.metadata) == []
    tables = set(inspect(database.engine).get_table_names())
    assert {"blobs", "copies", "locations", "sites", "refs", "namespaces", "audit_log"} <= tables
    assert {"packages", "tenants", "users", "api_tokens", "extracted_trees"} <= tables


def _check_sessions_match_models(database: Database) -> None:
    assert _differences(database, SessionBase.metadata) == []


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    _check_matches_models(database)
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    database.close()


def test_sqlite_sessions_file_matches_models(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'sessions.db'}", schema=SESSIONS)
    _check_sessions_match_models(database)
    assert set(inspect(database.engine).get_table_names()) == {
        "sessions",
        "alembic_version_sessions",
    }
    database.close()


@pytest.mark.postgres
def test_postgres_schema_matches_models(postgres_url: str) -> None:
    """Both histories in one PostgreSQL database, each blind to the other's tables."""
    catalog = Database(postgres_url)
    sessions = Database(postgres_url, schema=SESSIONS)
    _check_matches_models(catalog)
    _check_sessions_match_models(sessions)
    sessions.close()
    catalog.close()


def test_reopening_is_a_no_op(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = Database(url)
    revision = current_revision(first.engine)
    first.close()
    second = Database(url)
    assert revision is not None
    assert current_revision(second.engine) == revision
    second.close()


@pytest.mark.parametrize("schema", [CATALOG, SESSIONS], ids=["catalog", "sessions"])
def test_head_constant_names_the_newest_migration(schema: Schema) -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(schema.script_location).get_current_head() == schema.head

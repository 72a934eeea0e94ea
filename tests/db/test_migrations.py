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


def test_0006_keeps_accounts_and_their_references_and_stops_id_reuse(tmp_path: Path) -> None:
    """Upgrading a SQLite catalog with accounts in it rebuilds tenants, users and tokens
    with AUTOINCREMENT: every row and every foreign key survives, and the id of a
    hard-deleted user is not handed out again."""
    from alembic import command

    from safekeeper.db.engine import _alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "0005")
    with engine.begin() as connection:
        run = connection.exec_driver_sql
        run("INSERT INTO tenants VALUES (1, 'acme', '2026-01-01', NULL)")
        run("INSERT INTO users VALUES (1, 1, 'a', 'member', 'h', '2026-01-01', NULL, NULL)")
        run("INSERT INTO users VALUES (2, 1, 'b', 'admin', 'h', '2026-01-01', NULL, NULL)")
        run("INSERT INTO api_tokens VALUES (1, 2, 'x', 't', '2026-01-01', NULL, NULL)")
        run(
            "INSERT INTO namespaces (id, name, created_at, tenant_id, owner_user_id) "
            "VALUES (1, 'ns', '2026-01-01', 1, 2)"
        )
    engine.dispose()
    database = Database(url)
    with database.engine.begin() as connection:
        run = connection.exec_driver_sql
        assert run("SELECT id, name FROM users ORDER BY id").all() == [(1, "a"), (2, "b")]
        assert run("SELECT user_id FROM api_tokens").all() == [(2,)]
        assert run("PRAGMA foreign_key_check").all() == []
        for table in ("tenants", "users", "api_tokens"):
            sql = run(f"SELECT sql FROM sqlite_master WHERE name = '{table}'").scalar()
            assert "AUTOINCREMENT" in str(sql)
        run("DELETE FROM api_tokens")
        run("UPDATE namespaces SET owner_user_id = NULL")
        run("DELETE FROM users WHERE id = 2")
        run(
            "INSERT INTO users (tenant_id, name, role, password_hash, created_at) "
            "VALUES (1, 'c', 'member', 'h', '2026-01-01')"
        )
        assert run("SELECT id FROM users WHERE name = 'c'").scalar() == 3
    assert _differences(database, Base.metadata) == []
    database.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_0007_lets_tasks_be_cancelled_and_its_downgrade_fails_them(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """The task state constraint takes ``cancelled`` (and still refuses nonsense); going
    back to 0006 turns cancelled tasks into failed ones the old constraint accepts."""
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    from safekeeper.archive import Archive
    from safekeeper.config import load_config, write_default
    from safekeeper.db.engine import _alembic_config
    from safekeeper.services.copies.replication import replication_pass
    from safekeeper.services.operations.tasks import cancel_tasks

    environ: dict[str, str] = {}
    if backend == "postgresql":
        environ["SAFEKEEPER_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    write_default(tmp_path / "data")
    archive = Archive(load_config(data_dir=tmp_path / "data", environ=environ))
    try:
        archive.put_bytes(b"to be cancelled")
        (task_id,) = replication_pass(archive).task_ids
        assert cancel_tasks(archive, [task_id], actor="t").cancelled == [task_id]
        engine = archive.db.engine
        with engine.begin() as connection, pytest.raises(IntegrityError):
            connection.exec_driver_sql("UPDATE tasks SET state = 'paused'")
        with engine.begin() as connection:
            command.downgrade(_alembic_config(connection), "0006_workers")
        with engine.begin() as connection:
            assert connection.exec_driver_sql("SELECT state FROM tasks").scalar() == "failed"
        with engine.begin() as connection, pytest.raises(IntegrityError):
            connection.exec_driver_sql("UPDATE tasks SET state = 'cancelled'")
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "head")
            connection.exec_driver_sql("UPDATE tasks SET state = 'cancelled'")
    finally:
        archive.close()


def test_partial_indexes_state_their_predicate_on_both_backends() -> None:
    """SQLite's predicate is in the models from the start; PostgreSQL's is added when a
    PostgreSQL engine is made (naming it at import would load the PostgreSQL dialect in
    every process), so DDL made from the models is partial on both."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex

    from safekeeper.db.engine import make_engine
    from safekeeper.db.models import PARTIAL_INDEXES

    make_engine("postgresql+psycopg://nobody@localhost/none").dispose()  # connects to nothing
    assert {index.name for index, _ in PARTIAL_INDEXES} == {
        "uq_copies_live",
        "uq_staging_jobs_active_name",
    }
    for index, where in PARTIAL_INDEXES:
        for dialect in (sqlite.dialect(), postgresql.dialect()):
            ddl = str(CreateIndex(index).compile(dialect=dialect))
            assert ddl.startswith("CREATE UNIQUE INDEX") and ddl.endswith(f"WHERE {where}"), ddl

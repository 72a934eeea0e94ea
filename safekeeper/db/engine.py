"""Engines, transactions and migrations.

SQLite runs in WAL mode so readers never block the writer. Write transactions start
with ``BEGIN IMMEDIATE``: SQLite otherwise starts a deferred read that fails with
"database is locked" when it later tries to write after another writer committed —
a retryable error that would leak into every service. Read transactions stay deferred.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from safekeeper import migrations, migrations_sessions
from safekeeper.db.quick_reads import QuickReader
from safekeeper.errors import BadInput, ConfigError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Schema:
    """A migration history: where its scripts are, its newest revision, its version table."""

    script_location: str
    head: str
    version_table: str


CATALOG = Schema(str(_PACKAGE_DIR / "migrations"), migrations.HEAD, "alembic_version")
SESSIONS = Schema(
    str(_PACKAGE_DIR / "migrations_sessions"), migrations_sessions.HEAD, "alembic_version_sessions"
)


#: How long a SQLite connection waits for another process's lock before giving up.
SQLITE_BUSY_SECONDS = 60


def _enter_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out other processes. SQLite answers "database
    is locked" at once, without its busy handler, while another connection holds the
    lock the switch needs (several processes opening a fresh database together: seen
    in tests/db/test_first_start.py), so the wait is done here."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        _enter_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode != "NONE":
            connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def make_engine(url: str) -> Engine:
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError as exc:
        raise ConfigError(f"bad database URL {url!r}: {exc}") from exc
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        from safekeeper.db.models import add_postgresql_predicates

        add_postgresql_predicates()
        return create_engine(url, pool_pre_ping=True)
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


def dialect_insert(session: Session, table: Any) -> PostgresInsert | SqliteInsert:
    """``INSERT INTO table`` in the session's dialect, for ``on_conflict_do_nothing``.
    PostgreSQL's is imported only on PostgreSQL: that import loads SQLAlchemy's whole
    PostgreSQL dialect, ~20 ms of every command's start-up on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgres_insert

        return postgres_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _alembic_config(connection: Connection, schema: Schema = CATALOG) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", schema.script_location)
    config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine, schema: Schema = CATALOG) -> str | None:
    """The schema's Alembic revision, read directly (importing Alembic costs ~0.1 s of
    every command's start-up; it is loaded only when there is something to apply)."""
    with engine.connect() as connection:
        try:
            return connection.execute(
                text(f"SELECT version_num FROM {schema.version_table}")
            ).scalar()
        except (OperationalError, ProgrammingError):
            return None  # no version table yet: an empty database


#: The PostgreSQL advisory lock that serializes schema changes and the catalog sync of
#: processes starting together (one key for both histories: they may share a database).
SCHEMA_LOCK_KEY = 0x5AFE_0001


def lock_schema(connection: Connection) -> None:
    """Serialize with every other process migrating or syncing this database, until the
    transaction ends. SQLite needs nothing here: the caller's ``BEGIN IMMEDIATE`` already
    holds the database's one write lock."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})


def upgrade(engine: Engine, schema: Schema = CATALOG) -> None:
    """Bring the schema to the newest migration; a no-op when it already is.

    Safe when several processes open a fresh database at once: the migration runs under
    a database-wide lock (PostgreSQL advisory lock, SQLite write lock), and whoever gets
    it second finds the schema already at head."""
    if current_revision(engine, schema) == schema.head:
        return
    from alembic import command

    with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as connection:
        lock_schema(connection)
        if _revision_in(connection, schema) == schema.head:
            return  # another process migrated while we waited for the lock
        command.upgrade(_alembic_config(connection, schema), "head")


def _revision_in(connection: Connection, schema: Schema) -> str | None:
    exists = connection.dialect.has_table(connection, schema.version_table)
    if not exists:
        return None
    return connection.execute(text(f"SELECT version_num FROM {schema.version_table}")).scalar()


class Database:
    """One database: a deferred-read engine and an immediate-write view of the same pool."""

    def __init__(self, url: str, *, migrate: bool = True, schema: Schema = CATALOG) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        #: For single-statement reads on hot paths: SQLite skips the explicit BEGIN (one
        #: statement is its own consistent snapshot); elsewhere the same as ``engine``.
        self.single_read_engine = self.engine.execution_options(sqlite_begin="NONE")
        self._quick: QuickReader | None = None
        self._quick_lock = threading.Lock()
        if migrate:
            try:
                upgrade(self.engine, schema)
            except OperationalError as exc:
                raise BadInput(f"cannot open database {self.safe_url}: {exc.orig}") from exc

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in a write transaction: committed on success, rolled back on error."""
        with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading. Closing it returns the connection to the pool, which
        rolls back; loaded objects stay readable (closing does not expire them)."""
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @property
    def quick(self) -> QuickReader:
        """Single-row reads on hot paths without SQLAlchemy's per-statement overhead."""
        reader = self._quick
        if reader is not None:  # the hot path: no lock once made
            return reader
        with self._quick_lock:
            if self._quick is None:
                self._quick = QuickReader(self)
            return self._quick

    def close(self) -> None:
        with self._quick_lock:
            if self._quick is not None:
                self._quick.close()
                self._quick = None
        self.engine.dispose()

"""Single-row reads on a hot path, without SQLAlchemy's per-statement overhead.

The session check runs two indexed single-row SELECTs on every signed-in request.
Through a pooled SQLAlchemy connection each costs ~0.1 ms (pool checkout and return,
events, result set machinery); on a SQLite connection kept open by the calling
thread the same statement, pre-compiled, costs ~0.01 ms. That is the difference
between package serving at a fraction of its unauthenticated speed and at most of it.

Nothing is cached but the compiled SQL: every call reads the database. The kept
connection is in autocommit mode and each result is read to its end, so no read
transaction stays open between calls and every read sees the latest commit (WAL).
Statements with parameters use the dialect's bind and result processing, so values
come back as SQLAlchemy would return them (aware datetimes from ``UTCDateTime``).
On PostgreSQL the reads go through the engine as usual.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select

if TYPE_CHECKING:
    from safekeeper.db.engine import Database

_Processor = Callable[[Any], Any] | None
_Select = Select[*tuple[Any, ...]]
#: Quick reads are for a few module-level statements; more than this means misuse.
_MAX_STATEMENTS = 64


class _Compiled:
    def __init__(self, statement: _Select, database: Database) -> None:
        dialect = database.engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        #: (name, value built into the statement, bind processor) per placeholder
        self.params = [
            (
                name,
                compiled.binds[name].effective_value,
                compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name in compiled.positiontup or ()
        ]
        self.results: list[_Processor] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]


class QuickReader:
    """``first(statement, params)`` for one database; safe to share between threads."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._sqlite = database.dialect == "sqlite"
        self._local = threading.local()
        self._compiled: dict[int, tuple[_Select, _Compiled]] = {}
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()

    def first(self, statement: _Select, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first row of ``statement`` (meant for lookups by a unique key), or None."""
        if not self._sqlite:
            with self._database.single_read_engine.connect() as connection:
                return connection.execute(statement, params).first()
        compiled = self._compile(statement)
        values = []
        for name, built_in, process in compiled.params:
            value = params.get(name, built_in)
            values.append(process(value) if process is not None else value)
        # fetchall, not fetchone: a statement left mid-result keeps its snapshot open.
        rows = self._connection().execute(compiled.sql, values).fetchall()
        if not rows:
            return None
        return tuple(
            process(value) if process is not None else value
            for process, value in zip(compiled.results, rows[0], strict=True)
        )

    def data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version`` on this thread's connection: it changes
        whenever another connection commits (and only this reader's connections never
        write), so an unchanged value means every earlier read here would read the
        same. None on other databases."""
        if not self._sqlite:
            return None
        version: int = self._connection().execute("PRAGMA data_version").fetchone()[0]
        return version

    def thread_memo(self) -> dict[Any, Any]:
        """A dict for this thread's answers derived from this reader's reads; it goes
        with the reader (``close``), so nothing outlives the connection it came from."""
        memo: dict[Any, Any] | None = getattr(self._local, "memo", None)
        if memo is None:
            memo = self._local.memo = {}
        return memo

    def _compile(self, statement: _Select) -> _Compiled:
        # Keyed by identity and holding the statement, so the id cannot be reused.
        found = self._compiled.get(id(statement))
        if found is None:
            if len(self._compiled) >= _MAX_STATEMENTS:
                self._compiled.clear()  # statements built per call: no cache, no leak
            found = (statement, _Compiled(statement, self._database))
            self._compiled[id(statement)] = found
        return found[1]

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            engine = self._database.engine
            args, kwargs = engine.dialect.create_connect_args(engine.url)
            # Closed by ``close`` from whichever thread closes the Database.
            connection = engine.dialect.loaded_dbapi.connect(
                *args, **{**kwargs, "check_same_thread": False}
            )
            connection.isolation_level = None
            connection.execute("PRAGMA busy_timeout=60000")
            self._local.connection = connection
            with self._opened_lock:
                self._opened.append(connection)
        return connection

    def close(self) -> None:
        """Close every thread's connection (``Database.close`` calls this)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
        self._local = threading.local()

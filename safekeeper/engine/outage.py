"""Waiting out a database outage instead of failing the work that meets it.

A worker whose database is restarting must neither fail the task it was handed nor
throw away the message that carried it (issue 15): it waits until the database
answers again, then goes on. ``stopping`` ends every wait early when the worker
process shuts down, so a shutdown is not held up by an outage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, TypeGuard

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

if TYPE_CHECKING:
    from safekeeper.archive import Archive

log = logging.getLogger(__name__)

#: Seconds between two attempts to reach the database while it is away.
POLL_SECONDS = 1.0

#: Set when the worker process shuts down: the waits below give up.
stopping = threading.Event()


def database_unavailable(exc: BaseException) -> TypeGuard[DBAPIError]:
    """Whether ``exc`` says the database could not be used right now (connection
    refused or lost, server shutting down), rather than that a statement is wrong.

    PostgreSQL's OperationalError also covers a deadlock or a serialization failure:
    for those too, the wait below returns at once and a retry is the right answer.
    """
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


def database_answers(archive: Archive) -> bool:
    try:
        with archive.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError:
        return False
    return True


def wait_for_database(archive: Archive, timeout: float | None = None) -> bool:
    """Poll until the database answers: True then; False when ``timeout`` seconds pass
    first or the process is stopping."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not database_answers(archive):
        if stopping.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return False
        stopping.wait(POLL_SECONDS)
    return True

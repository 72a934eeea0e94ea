"""Quick single-row reads: the same values SQLAlchemy returns, and always current."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta

import pytest
from sqlalchemy import bindparam, delete, select

from safekeeper.archive import Archive
from safekeeper.db.models import Tenant
from safekeeper.services.access import accounts
from tests.conftest import ArchiveFactory

BY_NAME = select(Tenant.id, Tenant.name, Tenant.created_at, Tenant.deleted_at).where(
    Tenant.name == bindparam("name")
)


def test_rows_match_sqlalchemy_and_every_read_sees_the_latest_commit(archive: Archive) -> None:
    reader = archive.db.quick
    assert archive.db.quick is reader
    assert reader.first(BY_NAME, {"name": "acme"}) is None
    accounts.add_tenant(archive, "acme")
    row = reader.first(BY_NAME, {"name": "acme"})
    with archive.db.read() as session:
        expected = session.execute(BY_NAME, {"name": "acme"}).one()
    assert row == tuple(expected)
    assert row is not None and row[2].utcoffset() == timedelta(0)  # aware, as stored
    literal = select(Tenant.name).where(Tenant.name == "acme", Tenant.id > 0)
    assert reader.first(literal, {}) == ("acme",)  # values built into the statement
    with archive.db.write() as session:
        session.execute(delete(Tenant).where(Tenant.name == "acme"))
    assert reader.first(BY_NAME, {"name": "acme"}) is None


def test_each_thread_reads_on_its_own_connection(archive: Archive) -> None:
    accounts.add_tenant(archive, "acme")
    reader = archive.db.quick
    found: list[object] = []

    def read() -> None:
        for _ in range(50):
            found.append(reader.first(BY_NAME, {"name": "acme"}))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 200 and all(row is not None and row[1] == "acme" for row in found)


def test_closing_the_database_closes_every_threads_connection(make_archive: ArchiveFactory) -> None:
    archive = make_archive()
    accounts.add_tenant(archive, "acme")
    reader = archive.db.quick
    threads = [
        threading.Thread(target=reader.first, args=(BY_NAME, {"name": "acme"})) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    opened = list(reader._opened)
    assert len(opened) == 3
    archive.db.close()
    for connection in opened:
        with pytest.raises(sqlite3.ProgrammingError):  # closed
            connection.execute("SELECT 1")
    assert archive.db.quick is not reader  # a fresh reader if the database is used again

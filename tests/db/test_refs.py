"""References keep ``blobs.unreferenced_since`` NULL exactly while a blob is referenced."""

from __future__ import annotations

import hashlib
from datetime import datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from safekeeper.archive import Archive
from safekeeper.db.blobs import ensure_blob, get_blob
from safekeeper.db.catalog import get_location
from safekeeper.db.copies import record_present, transition
from safekeeper.db.models import Blob, Copy, CopyState
from safekeeper.db.refs import (
    SetCounts,
    list_references,
    remove_reference,
    resolve,
    set_reference,
    set_references,
)
from safekeeper.errors import Conflict, NotFound
from safekeeper.ids import RefSpec
from tests.conftest import FakeClock


def _blob_id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _stored_blob(session: Session, n: int, size: int, now: datetime) -> Blob:
    """A blob row with a present copy in the inbox (references need one)."""
    blob = ensure_blob(session, _blob_id(n), size, now)
    record_present(session, blob.id, get_location(session, "inbox").id, now)
    return blob


def test_reference_lifecycle_drives_unreferenced_since(archive: Archive, clock: FakeClock) -> None:
    draft, published = RefSpec("course", "unit", "draft"), RefSpec("course", "unit", "published")
    with archive.db.write() as session:
        old = _stored_blob(session, 1, 10, clock())
        new = _stored_blob(session, 2, 20, clock())
        assert old.unreferenced_since == clock()  # never referenced: the grace clock runs
        set_reference(session, draft, old, clock())
        set_reference(session, published, old, clock())
    clock.advance(hours=1)
    with archive.db.write() as session:
        # Replacing the draft keeps the old blob referenced by 'published'.
        previous = set_reference(session, draft, get_blob(session, _blob_id(2)), clock())
        assert previous == old.id
        session.expire_all()
        assert get_blob(session, _blob_id(1)).unreferenced_since is None
        assert get_blob(session, _blob_id(2)).unreferenced_since is None
    clock.advance(hours=1)
    with archive.db.write() as session:
        remove_reference(session, published, clock())
        session.expire_all()
        assert get_blob(session, _blob_id(1)).unreferenced_since == clock()
        assert get_blob(session, _blob_id(2)).unreferenced_since is None
        assert resolve(session, draft).id == new.id
        assert [r.spec for r in list_references(session, "course")] == [draft]


def test_setting_the_same_blob_again_changes_nothing(archive: Archive, clock: FakeClock) -> None:
    spec = RefSpec("ns", "k")
    with archive.db.write() as session:
        blob = _stored_blob(session, 3, 1, clock())
        assert set_reference(session, spec, blob, clock()) is None
        assert set_reference(session, spec, blob, clock()) is None
        assert len(list_references(session)) == 1


def test_missing_reference(archive: Archive, clock: FakeClock) -> None:
    with archive.db.write() as session, pytest.raises(NotFound, match="no reference ns:k:default"):
        remove_reference(session, RefSpec("ns", "k"), clock())
    with archive.db.read() as session, pytest.raises(NotFound):
        resolve(session, RefSpec("ns", "k"))


def test_a_reference_needs_a_present_copy(archive: Archive, clock: FakeClock) -> None:
    with archive.db.write() as session:
        bare = ensure_blob(session, _blob_id(4), 1, clock())
        with pytest.raises(Conflict, match="no present copy"):
            set_reference(session, RefSpec("ns", "k"), bare, clock())
    with archive.db.write() as session:
        blob = _stored_blob(session, 5, 1, clock())
        copy_id = session.scalars(select(Copy.id).where(Copy.blob_id == blob.id)).one()
        # a deleter has claimed the only copy: the reference must fail, not dangle
        transition(session, copy_id, CopyState.PRESENT, CopyState.DELETING, clock())
        with pytest.raises(Conflict):
            set_reference(session, RefSpec("ns", "k2"), blob, clock())


def test_bulk_set_counts_replaces_and_keeps_the_grace_clock(
    archive: Archive, clock: FakeClock
) -> None:
    with archive.db.write() as session:
        old, new, other = (_stored_blob(session, n, 10 * n, clock()) for n in (1, 2, 3))
        set_reference(session, RefSpec("course", "unit", "draft"), old, clock())
    clock.advance(hours=1)
    with archive.db.write() as session:
        counts = set_references(
            session,
            "course",
            {
                ("unit", "draft"): get_blob(session, _blob_id(2)),  # replaces old
                ("unit", "published"): get_blob(session, _blob_id(2)),  # new
                ("extra", "default"): get_blob(session, _blob_id(3)),  # new
            },
            clock(),
        )
        assert counts == SetCounts(created=2, replaced=1, unchanged=0)
    with archive.db.write() as session:
        again = set_references(
            session, "course", {("extra", "default"): get_blob(session, _blob_id(3))}, clock()
        )
        assert again == SetCounts(created=0, replaced=0, unchanged=1)
    with archive.db.read() as session:
        assert get_blob(session, _blob_id(1)).unreferenced_since == clock()
        assert get_blob(session, _blob_id(2)).unreferenced_since is None
        assert get_blob(session, _blob_id(3)).unreferenced_since is None
        assert {(r.key, r.label, r.blob) for r in list_references(session, "course")} == {
            ("unit", "draft", new.sha256),
            ("unit", "published", new.sha256),
            ("extra", "default", other.sha256),
        }


def test_bulk_set_refuses_a_blob_without_a_present_copy(archive: Archive, clock: FakeClock) -> None:
    with archive.db.write() as session:
        blob = _stored_blob(session, 1, 10, clock())
        copy_id = session.scalar(select(Copy.id).where(Copy.blob_id == blob.id))
        assert copy_id is not None
        transition(session, copy_id, CopyState.PRESENT, CopyState.DELETING, clock())
    with pytest.raises(Conflict, match="no present copy"), archive.db.write() as session:
        set_references(
            session, "course", {("unit", "draft"): get_blob(session, blob.sha256)}, clock()
        )
    with archive.db.read() as session:
        assert list_references(session, "course") == []

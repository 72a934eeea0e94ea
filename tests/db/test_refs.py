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
from safekeeper.db.refs import list_references, remove_reference, resolve, set_reference
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

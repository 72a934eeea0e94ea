"""Erasure end to end: user erased → grace period → gc → no copy of their blobs anywhere,
and the audit log ties every deletion to the erasure."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.db.models import (
    AuditEntry,
    Blob,
    Copy,
    CopyState,
    ExtractedTree,
    Location,
    Namespace,
    User,
)
from safekeeper.engine.embedded import run_due
from safekeeper.errors import NotFound, PolicyDenied, Unauthenticated
from safekeeper.ids import RefSpec
from safekeeper.packages.cache import package_cache
from safekeeper.services.access import accounts, erasure, sessions, tenancy
from safekeeper.services.access.login_throttle import LoginThrottle
from safekeeper.services.copies import replication
from safekeeper.services.deletion import gc, holds
from safekeeper.services.packaging import packages
from tests.conftest import ArchiveFactory, FakeClock
from tests.packages.zips import build_html_package

PASSWORD = "correct horse battery"
REPLICATING = {"SAFEKEEPER__LOCATIONS__INBOX__REPLICATE_TO": '["archive"]'}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def replicating(request: pytest.FixtureRequest, make_archive: ArchiveFactory) -> Archive:
    """inbox replicates to archive, so every blob has two copies in two locations."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return make_archive(url, **REPLICATING)


def _user_with_blobs(archive: Archive) -> tuple[str, list[str], str]:
    """alice owns acme.alice-files with two blobs; one more blob she shares with bob's namespace."""
    for name in ("alice", "bob"):
        accounts.add_user(
            archive, name, tenant="acme", role="member", password=PASSWORD, create_tenant=True
        )
    throttle = LoginThrottle(100, archive.config.server.login_window)
    token, alice = accounts.sign_in(archive, throttle, "alice", PASSWORD)
    _, bob = accounts.sign_in(archive, throttle, "bob", PASSWORD)
    with archive.db.write() as session:
        tenancy.claim_namespace(session, alice, "acme.alice-files", archive.clock())
        tenancy.claim_namespace(session, bob, "acme.bob-files", archive.clock())
    own = [
        archive.put_bytes(b"alice's diary", ref="acme.alice-files:diary").sha256,
        archive.put_bytes(b"alice's photo", ref="acme.alice-files:photos/1.jpg").sha256,
    ]
    shared = archive.put_bytes(b"a shared memo", ref="acme.alice-files:memo").sha256
    archive.put_bytes(b"a shared memo", ref="acme.bob-files:memo")
    replication.replication_pass(archive)
    run_due(archive)
    return token, own, shared


def _live_copies(archive: Archive, sha256: str) -> list[str]:
    with archive.db.read() as session:
        return list(
            session.scalars(
                select(Location.name)
                .join(Copy, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Blob.sha256 == sha256, Copy.state != CopyState.DELETED)
                .order_by(Location.name)
            )
        )


def test_erasure_end_to_end(replicating: Archive, clock: FakeClock) -> None:
    archive = replicating
    token, own, shared = _user_with_blobs(archive)
    assert all(_live_copies(archive, blob) == ["archive", "inbox"] for blob in [*own, shared])

    report = erasure.erase_user(archive, "alice", actor="test")
    assert report.references == [
        "acme.alice-files:diary:default",
        "acme.alice-files:memo:default",
        "acme.alice-files:photos/1.jpg:default",
    ]
    assert report.namespaces == ["acme.alice-files"] and report.sessions_ended == 1
    with pytest.raises(Unauthenticated):
        sessions.validate(archive, token)
    with archive.db.read() as session:
        assert session.scalar(select(User).where(User.name == "alice")) is None
        assert session.scalar(select(Namespace).where(Namespace.name == "acme.alice-files")) is None

    gc.run_gc(archive, actor="gc-test")  # within the grace period archives keep garbage
    assert all("archive" in _live_copies(archive, blob) for blob in own)
    clock.advance(days=7, seconds=1)
    gc.run_gc(archive, actor="gc-test")
    assert all(_live_copies(archive, blob) == [] for blob in own)
    assert "archive" in _live_copies(archive, shared)  # bob still uses it: not garbage
    for blob in own:
        assert archive.store("inbox").exists(blob) is False
        assert archive.store("archive").exists(blob) is False

    with archive.db.read() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    for blob in own:
        erased = [r for r in rows if r.blob_sha256 == blob and r.action == erasure.ACTION]
        assert len(erased) == 1 and "erasure of user alice" in (erased[0].reason or "")
        assert json.loads(erased[0].evidence or "{}")["user"] == "alice"
        deleted = [r for r in rows if r.blob_sha256 == blob and r.action != erasure.ACTION]
        # one gc row per copy, after the erasure's; the archive copy goes only as garbage
        assert sorted(r.location or "" for r in deleted) == ["archive", "inbox"]
        assert all(r.id > erased[0].id and r.actor == "gc-test" for r in deleted)
        assert [r.rule for r in deleted if r.location == "archive"] == ["garbage"]
    summary = [r for r in rows if r.action == erasure.ACTION and r.blob_sha256 is None]
    assert len(summary) == 1 and "3 references removed" in (summary[0].reason or "")


def test_a_hold_refuses_erasure_and_nothing_changes(archive: Archive) -> None:
    token, _own, _ = _user_with_blobs(archive)
    holds.add_hold(archive, "acme.alice-files", "litigation", "legal")
    with pytest.raises(PolicyDenied, match="hold"):
        erasure.erase_user(archive, "alice", actor="test")
    assert sessions.validate(archive, token).user_name == "alice"
    with archive.db.read() as session:
        assert session.scalar(select(User.name).where(User.name == "alice")) == "alice"
        assert session.scalar(select(AuditEntry).where(AuditEntry.action == "erase")) is None
    with pytest.raises(NotFound):
        erasure.erase_user(archive, "nobody", actor="test")


def test_an_erased_users_package_leaves_no_extracted_tree(
    replicating: Archive, clock: FakeClock
) -> None:
    """The unpacked tree in the cache holds the same content as the zip: it goes with
    the zip's last copy, with its own audit entry."""
    archive = replicating
    accounts.add_user(
        archive, "alice", tenant="acme", role="member", password=PASSWORD, create_tenant=True
    )
    _, alice = accounts.sign_in(
        archive, LoginThrottle(100, archive.config.server.login_window), "alice", PASSWORD
    )
    with archive.db.write() as session:
        tenancy.claim_namespace(session, alice, "acme.alice-course", archive.clock())
    zip_bytes = build_html_package(marker=b"alice")
    package = packages.put_package(
        archive, io.BytesIO(zip_bytes), RefSpec("acme.alice-course", "intro", "draft")
    )
    tree = package_cache(archive).tree_for(package.sha256)
    assert (tree / "index.html").is_file()
    replication.replication_pass(archive)
    run_due(archive)

    erasure.erase_user(archive, "alice", actor="test")
    clock.advance(days=7, seconds=1)
    report = gc.run_gc(archive, actor="gc-test")

    assert _live_copies(archive, package.sha256) == []
    assert report.trees_dropped == 1 and not tree.exists()
    with archive.db.read() as session:
        assert session.scalar(select(ExtractedTree.blob_id)) is None
        evicted = session.scalars(
            select(AuditEntry).where(
                AuditEntry.blob_sha256 == package.sha256, AuditEntry.action == "cache-evict"
            )
        ).all()
    assert [(entry.rule, entry.location) for entry in evicted] == [("garbage", "cache")]

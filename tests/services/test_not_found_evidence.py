"""Not found is evidence only under a fresh identity check (invariant 10).

An unmounted disk answers "not found" for every key, and another store mounted in its
place answers with other bytes; the identity check ``Archive.store`` relies on may be
up to IDENTITY_TTL old (here made an hour, so the window is certain). Every path that
turns an absence into a recorded change — a copy marked missing or corrupt, a claim
recorded deleted, an object adopted — must read the marker again first. On the
physical file stores: the disk goes (its root moves aside, an empty mount point stays)
right after a cached check, and nothing may be recorded from what the mount point shows.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.db.models import AuditEntry, Blob, Copy, CopyState, Location
from safekeeper.errors import NotFound, StoreIdentityError
from safekeeper.services.copies import verify
from safekeeper.services.deletion import gc, reconfirm
from safekeeper.stores import open_store
from safekeeper.stores.filesystem import FileStore
from safekeeper.stores.marker import MARKER_NAME, StoreMarker
from tests.conftest import ArchiveFactory, FakeClock
from tests.services.test_store_identity import (
    DATA,
    SHA,
    _files,
    _good_file,
    _mount,
    _replicate,
    _states,
    _unmount,
)


@pytest.fixture(autouse=True)
def _long_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """An identity, once checked, is trusted for an hour: only a fresh read can help."""
    monkeypatch.setattr("safekeeper.services.copies.identity.IDENTITY_TTL", 3600.0)


def _copy_id(archive: Archive, location: str, sha256: str = SHA) -> int:
    with archive.db.read() as session:
        found = session.scalar(
            select(Copy.id)
            .join(Location, Copy.location_id == Location.id)
            .join(Blob, Copy.blob_id == Blob.id)
            .where(Location.name == location, Blob.sha256 == sha256)
        )
    assert found is not None
    return found


def _audited(archive: Archive, action: str) -> int:
    with archive.db.read() as session:
        return len(list(session.scalars(select(AuditEntry).where(AuditEntry.action == action))))


def _archived(make_archive: ArchiveFactory, ref: str | None = "ns:k") -> Archive:
    """An archive whose blob has a present copy in the inbox and in the archive, and
    whose archive store's identity was just checked (cached now)."""
    archive = make_archive()
    archive.put_bytes(DATA, ref=ref)
    _replicate(archive)
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}
    archive.store("archive", fresh=True)
    return archive


# -- gc: recovering a dead gc's claims ------------------------------------------------


def test_recovery_records_nothing_deleted_from_a_store_unmounted_since_its_last_check(
    make_archive: ArchiveFactory, data_dir: Path, clock: FakeClock
) -> None:
    """A gc claimed the archive copy and died before the re-check (never fenced). The
    recovery looks in the store: an empty mount point must not make the only archive
    copy of a referenced blob "deleted" (with an audit row saying so)."""
    archive = _archived(make_archive)
    gc.claim(archive, [_copy_id(archive, "archive")])
    clock.advance(hours=1)  # older than gc_claim_timeout: stale
    hidden = _unmount(data_dir / "archive")
    report = gc.GcReport()
    gc.recover_stale_claims(archive, "test", report)
    assert report.recovered == 0
    assert _states(archive, SHA) == {"inbox": "present", "archive": "deleting"}
    assert _audited(archive, "delete-recovered") == 0
    _mount(data_dir / "archive", hidden)
    clock.advance(hours=1)  # the refused take-over left the claim under a new token
    gc.recover_stale_claims(archive, "test", gc.GcReport())
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}  # released
    assert _good_file(data_dir / "archive", SHA)


# -- gc: the delete itself ----------------------------------------------------------


def test_gc_records_nothing_deleted_when_the_disk_goes_during_the_delete(
    make_archive: ArchiveFactory, data_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk goes after the marker read right before the delete: deleting keys not
    found succeeds, so without a read after it the copy would be recorded deleted while
    its object is still on the disk. The claim stays fenced for recovery instead."""
    archive = _archived(make_archive, ref=None)  # garbage after the grace period
    clock.advance(days=8)
    gc.run_gc(archive, location="inbox")
    assert _states(archive, SHA) == {"archive": "present"}
    real_delete = FileStore.delete
    away: list[Path] = []

    def delete_as_the_disk_goes(store: FileStore, keys: Iterable[str]) -> None:
        if store.root == data_dir / "archive" and not away:
            away.append(_unmount(store.root))
        real_delete(store, keys)

    monkeypatch.setattr(FileStore, "delete", delete_as_the_disk_goes)
    report = gc.run_gc(archive, location="archive")
    assert away, "the delete was reached"
    assert report.deleted == 0 and "has no identity marker" in report.refused["archive"]
    assert _states(archive, SHA) == {"archive": "deleting"}
    assert _audited(archive, "delete") == 1  # the inbox copy's only
    assert _good_file(away[0], SHA)
    monkeypatch.undo()
    _mount(data_dir / "archive", away[0])
    clock.advance(hours=1)
    report = gc.run_gc(archive)
    assert report.recovered == 1 and report.deleted == 1
    assert not _files(data_dir / "archive", SHA)


# -- gc: re-confirming the other copies ----------------------------------------------


def test_reconfirmation_condemns_nothing_in_a_store_unmounted_during_the_batch(
    make_archive: ArchiveFactory, data_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch reads every evidence store's marker before its checks; the disk goes
    after that, before the archive copy's check. The copy is unconfirmed (so the inbox
    copy stays), not marked missing."""
    archive = _archived(make_archive, ref=None)  # the inbox copy may go once archived
    real_check = reconfirm.check_one
    away: list[Path] = []

    def check_as_the_disk_goes(
        archive: Archive, check: reconfirm.Check, deadline: float
    ) -> reconfirm.Result:
        if check.location == "archive" and not away:
            away.append(_unmount(data_dir / "archive"))
        return real_check(archive, check, deadline)

    monkeypatch.setattr(reconfirm, "check_one", check_as_the_disk_goes)
    report = gc.run_gc(archive, location="inbox")
    assert away, "the archive copy was re-confirmed"
    assert report.deleted == 0
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}
    assert _good_file(data_dir / "inbox", SHA) and _good_file(away[0], SHA)


# -- verify: condemning, and adopting ------------------------------------------------


def _other_store(data_dir: Path, objects: dict[str, bytes]) -> Path:
    """Another installation's store: its own marker, and ``objects`` under their keys."""
    root = data_dir / "other-disk"
    root.mkdir()
    store = open_store(f"file:{root}")
    try:
        store.initialize(StoreMarker.new("elsewhere").encode())
        for key, data in objects.items():
            store.put(key, [data])
    finally:
        store.close()
    return root


def _swap_in(root: Path, other: Path) -> Path:
    """The wrong disk is mounted where the store was: returns where the right one went."""
    hidden = _unmount(root)
    root.rmdir()
    other.rename(root)
    return hidden


def test_verify_condemns_nothing_as_corrupt_in_another_store_mounted_since_its_last_check(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    """Another store mounted in the archive's place holds other bytes under the copy's
    key: that says nothing about the archive copy."""
    archive = _archived(make_archive)
    hidden = _swap_in(data_dir / "archive", _other_store(data_dir, {SHA: b"other bytes"}))
    # Refusing the store (once it has looked again) is right; condemning its copy is not.
    with pytest.raises(StoreIdentityError, match="another store is mounted"):
        verify.verify(archive, location="archive")
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}
    shutil.rmtree(data_dir / "archive")
    hidden.rename(data_dir / "archive")
    assert verify.verify(archive, location="archive").ok == 1


def test_adoption_takes_nothing_from_another_store_mounted_since_its_last_check(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    """``verify --adopt`` lists the store and adopts the objects the catalog lacks:
    another store mounted in the archive's place must not lend it its objects."""
    archive = _archived(make_archive)
    foreign = b"another installation's file"
    foreign_sha = hashlib.sha256(foreign).hexdigest()
    hidden = _swap_in(data_dir / "archive", _other_store(data_dir, {foreign_sha: foreign}))
    orphans = verify.find_orphans(archive, "archive", adopt=True)
    assert [(o.key, o.outcome.startswith("not adopted")) for o in orphans] == [(foreign_sha, True)]
    assert "identity marker" in orphans[0].outcome
    with pytest.raises(NotFound):
        _states(archive, foreign_sha)
    shutil.rmtree(data_dir / "archive")
    hidden.rename(data_dir / "archive")
    assert (data_dir / "archive" / MARKER_NAME).exists()
    assert verify.find_orphans(archive, "archive", adopt=True) == []
    assert _states(archive, SHA)["archive"] == CopyState.PRESENT


# -- serving: the library, and the fsspec adapter ------------------------------------


def test_a_read_of_copies_on_disks_gone_since_their_last_check_is_unavailable_not_not_found(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    """Every copy's disk went away after its cached check: the blob is unavailable (a
    transient error, 503), not "not found" — which a client, or fsspec's
    FileNotFoundError, may take for "gone" and act on."""
    from safekeeper.contrib.filesystem import SafekeeperFileSystem

    archive = _archived(make_archive)
    archive.store("inbox", fresh=True)
    filesystem = SafekeeperFileSystem(archive=archive, skip_instance_cache=True)
    away = {name: _unmount(data_dir / name) for name in ("inbox", "archive")}
    with pytest.raises(StoreIdentityError, match=f"no readable copy of blob {SHA} now"):
        archive.read_blob(SHA)
    with pytest.raises(StoreIdentityError):
        filesystem.cat_file("ns/k")
    for name, disk in away.items():
        _mount(data_dir / name, disk)
    assert archive.read_blob(SHA) == DATA
    assert filesystem.cat_file("ns/k") == DATA
    # Objects really gone from stores that are really there: not found, as before.
    for name in ("inbox", "archive"):
        for path in _files(data_dir / name, SHA):
            path.unlink()
    with pytest.raises(NotFound, match=f"no readable copy of blob {SHA}"):
        archive.read_blob(SHA)
    with pytest.raises(FileNotFoundError):
        filesystem.cat_file("ns/k")


# -- serving packages: the extracted trees -------------------------------------------


def test_a_package_tree_is_not_rebuilt_on_an_unmounted_cache_disk(
    make_archive: ArchiveFactory,
) -> None:
    """A tree not found on the cache disk is extracted again and recorded — unless the
    disk is away: extracting onto its empty mount point would fill the disk beneath
    and record a tree that vanishes on remount."""
    from safekeeper.packages.cache import package_cache
    from tests.packages import zips

    archive = make_archive()
    sha = archive.put_bytes(zips.build_html_package(), ref="courses:intro").sha256
    cache = package_cache(archive)
    tree = cache.tree_for(sha)
    assert tree.is_dir() and _audited(archive, "cache-extract") == 1
    root = cache.layout.root
    hidden = _unmount(root)
    cache.forget(sha)  # as the server does when a member is not found
    with pytest.raises(StoreIdentityError, match="has no identity marker"):
        cache.tree_for(sha)
    assert not tree.exists() and not (root / ".tmp").exists()
    assert list(root.iterdir()) == []  # not even a lock file on the mount point
    assert _audited(archive, "cache-extract") == 1
    _mount(root, hidden)
    assert cache.tree_for(sha) == tree and tree.is_dir()
    assert _audited(archive, "cache-extract") == 1  # the disk's tree, not a new one


# -- a writer beside the not-found paths: bundle import -------------------------------


def test_a_bundle_import_writes_nothing_into_an_inbox_unmounted_since_its_last_check(
    make_archive: ArchiveFactory, data_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:
    """Like a put, an import is a writer: it reads the inbox's marker afresh, so its
    objects never land on an empty mount point (recorded present, hidden on remount)."""
    import io

    from safekeeper.config import load_config, write_default
    from safekeeper.services.packaging.bundles import export_namespace, import_bundle

    other_dir = tmp_path / "other"
    write_default(other_dir)
    with Archive(load_config(data_dir=other_dir, environ={}), clock=clock) as other:
        imported = other.put_bytes(b"bytes from another installation", ref="course:a").sha256
        bundle = io.BytesIO()
        export_namespace(other, "course", bundle)
    archive = make_archive()
    archive.put_bytes(DATA)  # the inbox's identity is checked: cached now
    hidden = _unmount(data_dir / "inbox")
    with pytest.raises(StoreIdentityError, match="store of location 'inbox'"):
        import_bundle(archive, io.BytesIO(bundle.getvalue()))
    assert list((data_dir / "inbox").iterdir()) == []
    with pytest.raises(NotFound):
        _states(archive, imported)
    _mount(data_dir / "inbox", hidden)
    assert import_bundle(archive, io.BytesIO(bundle.getvalue())).blobs_stored == 1
    assert _good_file(data_dir / "inbox", imported)


def test_verify_brings_no_lost_copy_back_from_another_store_mounted_since_its_last_check(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    """The reverse of condemning: a copy marked missing comes back ``present`` only
    when the recorded store holds its bytes — not another store mounted in its place
    that happens to hold them too."""
    archive = _archived(make_archive)
    for name in ("inbox", "archive"):  # both lost: nothing to repair them from
        for path in _files(data_dir / name, SHA):
            path.unlink()
    assert len(verify.verify(archive).missing) == 2
    archive.store("archive", fresh=True)  # the identity just checked: cached now
    hidden = _swap_in(data_dir / "archive", _other_store(data_dir, {SHA: DATA}))
    with pytest.raises(StoreIdentityError, match="another store is mounted"):
        verify.verify(archive, location="archive")
    assert _states(archive, SHA)["archive"] == CopyState.MISSING
    shutil.rmtree(data_dir / "archive")
    hidden.rename(data_dir / "archive")
    assert _states(archive, SHA)["archive"] == CopyState.MISSING

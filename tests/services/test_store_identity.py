"""Store identity (invariant 10): a store is what it was.

Each failure here was reproducible on the code before markers: two locations on one
directory (or bucket) made one object count as two copies, and an archive disk that
was not mounted got a fresh root and objects that vanished when it was mounted again,
after gc had freed the inbox on their strength. Every test checks the files on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from safekeeper.archive import Archive
from safekeeper.cli import app
from safekeeper.config import load_config
from safekeeper.db.models import AuditEntry, Location
from safekeeper.engine.embedded import run_due
from safekeeper.errors import ConfigError, NotFound, StoreIdentityError
from safekeeper.services.copies import ingest, inventory, replication
from safekeeper.services.copies.identity import Action, Facts, judge, move_location
from safekeeper.services.copies.tree import scan
from safekeeper.services.deletion import gc
from safekeeper.stores.marker import MARKER_NAME, StoreMarker
from tests.conftest import ArchiveFactory, FakeClock
from tests.servers import S3Server

runner = CliRunner()

DATA = b"the only copy " * 100
SHA = hashlib.sha256(DATA).hexdigest()


def _cli(data_dir: Path, *args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _files(root: Path, sha256: str) -> list[Path]:
    return [p for p in root.rglob(sha256) if p.is_file()] if root.exists() else []


def _good_file(root: Path, sha256: str) -> bool:
    return any(hashlib.sha256(p.read_bytes()).hexdigest() == sha256 for p in _files(root, sha256))


def _replicate(archive: Archive) -> None:
    replication.replication_pass(archive)
    run_due(archive)


def _states(archive: Archive, blob: str) -> dict[str, str]:
    return {c.location: c.state for c in inventory.stat_blob(archive, blob).copies}


def _unmount(root: Path) -> Path:
    """The disk goes away: its contents move aside, an empty mount point stays."""
    hidden = root.with_name(root.name + "-disk")
    os.rename(root, hidden)
    root.mkdir()
    return hidden


def _mount(root: Path, hidden: Path) -> None:
    """The disk comes back over the mount point, hiding what was written there."""
    shutil.rmtree(root)
    os.rename(hidden, root)


# -- the pure judgement ------------------------------------------------------------

U, V = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


@pytest.mark.parametrize(
    ("facts", "action", "says"),
    [
        (Facts("a", "u", U, U, "a"), Action.USE, ""),
        (Facts("a", "u", U, None), Action.REFUSE, "is the disk mounted"),
        (Facts("a", "u", U, V, "b"), Action.REFUSE, f"{V} of location 'b'"),
        (Facts("a", "u", U, V), Action.REFUSE, "another store"),
        (Facts("a", "u", None, None), Action.INITIALIZE, ""),
        (Facts("a", "u", None, None, None, 3, 1), Action.INITIALIZE, ""),
        (Facts("a", "u", None, None, None, 3, 0), Action.REFUSE, "none of the 3 copies"),
        (Facts("a", "u", None, U), Action.ADOPT, ""),
        (Facts("a", "u", None, U, "a"), Action.ADOPT, ""),
        (Facts("a", "u", None, U, "b"), Action.REFUSE, "store of location 'b'"),
    ],
)
def test_judge(facts: Facts, action: Action, says: str) -> None:
    judgement = judge(facts)
    assert judgement.action == action
    assert says in judgement.reason
    if action == Action.REFUSE:
        assert "store of location 'a' (u)" in judgement.reason


# -- aliasing: refused at config load -----------------------------------------------


def _write_config(data_dir: Path, inbox: str, archive: str, kind: str = "archive") -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "safekeeper.toml").write_text(
        f'[locations.inbox]\nkind = "source"\nstore = "{inbox}"\n\n'
        f'[locations.archive]\nkind = "{kind}"\nstore = "{archive}"\n'
    )


@pytest.mark.parametrize(
    ("inbox", "archive", "reason"),
    [
        ("file:disk", "file:disk", "the same place"),
        ("file:disk", "file:disk/", "the same place"),
        ("file:disk", "file:./other/../disk", "the same place"),
        ("file:disk", "file:link", "the same place"),  # link -> disk
        ("file:disk", "file:disk/archive", "inside"),
        ("file:disk/inbox", "file:disk", "around"),
        ("file:{root}/disk", "file:disk", "the same place"),  # absolute and relative
        ("file:disk", "file://{root}/link/", "the same place"),  # absolute link -> disk
        ("memory://one", "memory://one/", "the same place"),
        ("s3://bucket-a/p", "s3://bucket-a/p/", "the same place"),
        ("s3://bucket-a/p", "s3://bucket-a/p/q", "overlapping"),
        ("s3://bucket-a", "s3://bucket-a/p", "overlapping"),
    ],
)
def test_two_locations_on_one_place_are_refused(
    tmp_path: Path, inbox: str, archive: str, reason: str
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "disk").mkdir(parents=True)
    (data_dir / "link").symlink_to(data_dir / "disk")
    _write_config(data_dir, inbox.format(root=data_dir), archive.format(root=data_dir))
    with pytest.raises(ConfigError) as caught:
        load_config(data_dir=data_dir, environ={})
    message = str(caught.value)
    assert message.startswith(f"{data_dir / 'safekeeper.toml'}: locations.archive.store: ")
    assert reason in message and "locations.inbox.store" in message
    assert not (data_dir / "safekeeper.db").exists()


@pytest.mark.parametrize(
    ("inbox", "archive"),
    [
        ("file:disk", "file:disk2"),
        ("file:disk/a", "file:disk/b"),
        ("s3://bucket-a/p", "s3://bucket-a/pq"),
        ("s3://bucket-a/p", "s3://bucket-b/p"),
        ("memory://one", "memory://two"),
    ],
)
def test_distinct_places_are_accepted(tmp_path: Path, inbox: str, archive: str) -> None:
    _write_config(tmp_path, inbox, archive)
    assert set(load_config(data_dir=tmp_path, environ={}).locations) == {"inbox", "archive"}


def test_aliasing_the_config_cannot_see_is_refused_by_the_marker(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    """The archive's root becomes a link to the inbox's after the configuration was
    read (a bind mount does the same unseen): the inbox's marker gives it away."""
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    assert not (data_dir / "archive").exists()  # set up on first use
    (data_dir / "archive").symlink_to(data_dir / "inbox")
    with pytest.raises(StoreIdentityError, match="is the store of location 'inbox'"):
        archive.store("archive")
    _replicate(archive)
    assert _states(archive, SHA) == {"inbox": "present", "archive": "pending"}
    assert gc.run_gc(archive).deleted == 0
    assert _good_file(data_dir / "inbox", SHA)


@pytest.mark.s3
def test_one_bucket_through_two_endpoints_is_refused(tmp_path: Path, moto_server: S3Server) -> None:
    """Two spellings of one server's endpoint pass the config check; the marker the
    first location wrote in the bucket stops the second."""
    bucket = moto_server.make_bucket()
    options = moto_server.options()
    endpoint = str(options["endpoint"])
    other = endpoint.replace("127.0.0.1", "localhost")
    assert other != endpoint
    keys = "".join(
        f'{k} = "{v}"\n' for k, v in options.items() if k in ("access_key_id", "secret_access_key")
    )
    (tmp_path / "safekeeper.toml").write_text(
        f'[locations.inbox]\nkind = "source"\nstore = "s3://{bucket}/p"\n'
        f'endpoint = "{endpoint}"\n{keys}\n'
        f'[locations.archive]\nkind = "archive"\nstore = "s3://{bucket}/p/"\n'
        f'endpoint = "{other}"\n{keys}'
    )
    with Archive(load_config(data_dir=tmp_path, environ={})) as archive:
        archive.put_bytes(DATA, ref="ns:k")
        with pytest.raises(StoreIdentityError, match="is the store of location 'inbox'"):
            archive.store("archive")
        _replicate(archive)
        assert gc.run_gc(archive).deleted == 0
        assert archive.store("inbox").exists(SHA)
        with archive.db.read() as session:
            recorded = dict(session.execute(select(Location.name, Location.store_uuid)).all())
    marker = moto_server.client().get_object(Bucket=bucket, Key=f"p/{MARKER_NAME}")
    assert recorded == {"inbox": json.loads(marker["Body"].read())["uuid"], "archive": None}


# -- a store that is not the store it was ---------------------------------------------


def test_unmounted_archive_is_refused_and_the_inbox_keeps_the_only_copy(
    make_archive: ArchiveFactory, data_dir: Path, clock: FakeClock
) -> None:
    """The disk under the archive is not mounted when a new blob is put: nothing may be
    written to the empty mount point, and gc must keep the inbox copy."""
    first = make_archive()
    first.put_bytes(b"archived before", ref="ns:old")
    _replicate(first)
    first.close()
    hidden = _unmount(data_dir / "archive")

    archive = make_archive()  # a new process: the catalog remembers the marker
    archive.put_bytes(DATA, ref="ns:k")  # the inbox is fine
    with pytest.raises(StoreIdentityError, match=r"has no identity marker.*is the disk mounted"):
        archive.store("archive")
    with pytest.raises(StoreIdentityError, match="store of location 'archive'"):
        ingest.put_stream(archive, [b"straight to the archive"], None, "archive")
    _replicate(archive)
    report = gc.run_gc(archive)
    assert report.deleted == 0
    assert list((data_dir / "archive").iterdir()) == []  # nothing written, no marker
    assert _good_file(data_dir / "inbox", SHA)
    assert _states(archive, SHA) == {"inbox": "present", "archive": "pending"}

    _mount(data_dir / "archive", hidden)  # the disk is back: everything resumes
    archive.close()
    archive = make_archive()
    clock.advance(hours=1)  # the failed transfer's retry is due
    _replicate(archive)
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}
    assert gc.run_gc(archive).deleted == 2  # this blob's inbox copy, and the older one's
    assert _good_file(data_dir / "archive", SHA) and not _files(data_dir / "inbox", SHA)


def test_unmounted_under_a_running_archive(make_archive: ArchiveFactory, data_dir: Path) -> None:
    """A long-running server opened the archive store before the disk went: gc checks
    the marker again before it deletes, and counts nothing in the empty mount point."""
    archive = make_archive()
    old = archive.put_bytes(b"archived before", ref="ns:old").sha256
    _replicate(archive)
    assert archive.store("archive")  # confirmed and cached
    hidden = _unmount(data_dir / "archive")
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    gc.run_gc(archive)
    assert _good_file(data_dir / "inbox", SHA)
    assert not _files(data_dir / "archive", SHA)
    # Not evidence, and not proof of absence either: the old copies stay as they were.
    assert _states(archive, old) == {"inbox": "present", "archive": "present"}
    assert _good_file(data_dir / "inbox", old)
    with pytest.raises(StoreIdentityError):
        archive.store("archive", fresh=True)
    _mount(data_dir / "archive", hidden)
    assert archive.store("archive", fresh=True)


def test_missing_root_is_not_created_again(make_archive: ArchiveFactory, data_dir: Path) -> None:
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    archive.close()
    os.rename(data_dir / "archive", data_dir / "elsewhere")
    archive = make_archive()
    with pytest.raises(StoreIdentityError, match="has no identity marker"):
        archive.store("archive")
    assert gc.run_gc(archive).deleted == 0
    assert not (data_dir / "archive").exists()
    assert _good_file(data_dir / "inbox", SHA)


def test_marker_of_another_store_is_refused(make_archive: ArchiveFactory, data_dir: Path) -> None:
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    archive.close()
    marker = data_dir / "archive" / MARKER_NAME
    marker.unlink()
    shutil.copy(data_dir / "inbox" / MARKER_NAME, marker)
    archive = make_archive()
    with pytest.raises(StoreIdentityError, match=r"carries the identity marker .* of location"):
        archive.store("archive")
    assert gc.run_gc(archive).deleted == 0
    assert _good_file(data_dir / "inbox", SHA)


def test_garbled_marker_is_refused(make_archive: ArchiveFactory, data_dir: Path) -> None:
    make_archive().store("archive")
    marker = data_dir / "archive" / MARKER_NAME
    marker.unlink()
    marker.write_text("not json")
    with pytest.raises(StoreIdentityError, match="not a safekeeper store marker"):
        make_archive().store("archive")


def test_catalog_from_before_markers_checks_the_copies(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    """A location recorded before markers existed is set up on first use — but only if
    the store shows some of the copies the catalog records there."""
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    archive.close()
    for name in ("inbox", "archive"):
        (data_dir / name / MARKER_NAME).unlink()

    def forget_markers() -> None:
        with make_archive().db.write() as session:
            session.execute(update(Location).values(store_uuid=None))

    forget_markers()
    hidden = _unmount(data_dir / "archive")
    with pytest.raises(StoreIdentityError, match="none of the 1 copies"):
        make_archive().store("archive")
    assert not (data_dir / "archive" / MARKER_NAME).exists()
    _mount(data_dir / "archive", hidden)
    archive = make_archive()
    archive.store("archive")
    uuid = StoreMarker.parse((data_dir / "archive" / MARKER_NAME).read_bytes(), "t").uuid
    with archive.db.read() as session:
        recorded = session.scalar(select(Location.store_uuid).where(Location.name == "archive"))
    assert recorded == uuid


# -- changing a location's store or kind ------------------------------------------------


def test_changed_store_is_refused_until_moved(data_dir: Path, clock: FakeClock) -> None:
    code, _, err = _cli(data_dir, "put", "-", "--ref", "ns:k", input=DATA)
    assert code == 0, err
    assert _cli(data_dir, "replicate")[0] == 0
    config = data_dir / "safekeeper.toml"
    config.write_text(config.read_text().replace('"file:archive"', '"file:archive2"'))

    code, _, err = _cli(data_dir, "gc")
    assert code == 1
    assert "locations.archive.store: file://" in err and "archive2 differs" in err
    assert "safekeeper locations move archive --store" in err
    assert _good_file(data_dir / "inbox", SHA)

    (data_dir / "archive2").mkdir()  # an empty directory is not the archive
    code, _, err = _cli(data_dir, "locations", "move", "archive", "--store", "file:archive2")
    assert code == 1 and "has no identity marker and lacks 1 of the 1 copies" in err
    code, _, err = _cli(data_dir, "locations", "move", "archive", "--store", "file:archive3")
    assert code == 1 and "edit the configuration first" in err

    (data_dir / "archive2").rmdir()
    os.rename(data_dir / "archive", data_dir / "archive2")  # the operator moved it
    code, out, err = _cli(data_dir, "locations", "move", "archive", "--store", "file:archive2")
    assert code == 0, err
    assert "moved archive" in out and "same marker" in out
    code, out, err = _cli(data_dir, "gc", "--json")
    assert code == 0, err
    assert json.loads(out)["deleted"] == 1
    assert _good_file(data_dir / "archive2", SHA) and not _files(data_dir / "inbox", SHA)
    config_now = load_config(data_dir=data_dir, environ={})
    with Archive(config_now, clock=clock) as archive, archive.db.read() as session:
        moves = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "location-move")
        ).all()
        assert [(m.location, m.rule) for m in moves] == [("archive", "explicit-move")]
        evidence = json.loads(moves[0].evidence or "{}")
        row = session.scalar(select(Location).where(Location.name == "archive"))
        assert row is not None
        assert evidence["new_store"] == row.store_url == (data_dir / "archive2").as_uri()
        assert evidence["store_uuid"] == row.store_uuid


def test_changed_kind_is_refused_until_moved(make_archive: ArchiveFactory, data_dir: Path) -> None:
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    archive.close()
    config = data_dir / "safekeeper.toml"
    text = config.read_text()
    config.write_text(text.replace('kind = "archive"', 'kind = "buffer"', 1))
    with pytest.raises(ConfigError, match=r"locations\.archive\.kind: buffer differs"):
        make_archive()
    moving = Archive(load_config(data_dir=data_dir, environ={}), moving={"archive"})
    try:
        report = move_location(moving, "archive", kind="buffer")
    finally:
        moving.close()
    assert (report.old_kind, report.new_kind, report.how) == ("archive", "buffer", "same marker")
    assert make_archive().store("archive")


def test_store_of_a_location_without_copies_may_change(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    make_archive().store("archive")
    config = data_dir / "safekeeper.toml"
    config.write_text(config.read_text().replace('"file:archive"', '"file:fresh"'))
    archive = make_archive()
    archive.store("archive")
    assert (data_dir / "fresh" / MARKER_NAME).is_file()


# -- zero setup ----------------------------------------------------------------------


def test_fresh_data_dir_needs_no_setup(tmp_path: Path) -> None:
    """The README's first commands on a directory that does not exist yet."""
    data_dir = tmp_path / "new"
    code, _, err = _cli(data_dir, "put", "-", "--ref", "docs:readme", input=DATA)
    assert code == 0, err
    assert _good_file(data_dir / "inbox", SHA)
    assert (data_dir / "inbox" / MARKER_NAME).is_file()
    assert _cli(data_dir, "replicate")[0] == 0
    assert _good_file(data_dir / "archive", SHA)
    code, out, _ = _cli(data_dir, "locations", "--json")
    assert code == 0 and {r["name"] for r in json.loads(out)} >= {"inbox", "archive"}
    uuids = {
        StoreMarker.parse((data_dir / name / MARKER_NAME).read_bytes(), name).uuid
        for name in ("inbox", "archive")
    }
    assert len(uuids) == 2


def test_init_sets_every_store_up(tmp_path: Path) -> None:
    code, _, err = _cli(tmp_path, "init", str(tmp_path / "d"))
    assert code == 0, err
    for name in ("inbox", "archive", "cache"):
        assert (tmp_path / "d" / name / MARKER_NAME).is_file()
        assert (tmp_path / "d" / name / ".tmp").is_dir()


def test_cli_names_the_location_and_what_to_check(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    archive.close()
    _unmount(data_dir / "archive")
    code, _, err = _cli(data_dir, "put", "-", "--no-ref", "--location", "archive", input=b"x")
    assert code == 1
    line = " ".join(err.split())
    assert line.startswith("error: store of location 'archive' (file://")
    assert "is the disk mounted" in line
    assert list((data_dir / "archive").iterdir()) == []


def test_moved_data_dir_follows_but_an_empty_one_is_refused(tmp_path: Path) -> None:
    """Relative stores move with their data directory (the markers come along); a new,
    empty data directory on the same catalog is refused, not set up anew."""
    data_dir = tmp_path / "data"
    database = f"sqlite:///{tmp_path / 'catalog.db'}"
    env = {"SAFEKEEPER_DATABASE_URL": database}
    with Archive(load_config(data_dir=data_dir, environ=env)) as archive:
        archive.put_bytes(DATA, ref="ns:k")
        _replicate(archive)
    os.rename(data_dir, tmp_path / "moved")
    with Archive(load_config(data_dir=tmp_path / "moved", environ=env)) as archive:
        assert archive.read_blob(SHA) == DATA
        assert gc.run_gc(archive).deleted == 1
    with Archive(load_config(data_dir=tmp_path / "empty", environ=env)) as archive:
        with pytest.raises(StoreIdentityError, match="has no identity marker"):
            archive.store("archive")
        with pytest.raises(StoreIdentityError, match="has no identity marker"):
            archive.put_bytes(b"new")
    assert not (tmp_path / "empty" / "inbox").exists()
    assert _good_file(tmp_path / "moved" / "archive", SHA)


def test_gc_does_not_delete_from_an_unmounted_store(
    make_archive: ArchiveFactory, data_dir: Path, clock: FakeClock
) -> None:
    """Garbage whose archive copy is due while the archive's disk is away: nothing is
    claimed there, nothing recorded deleted; the object is still on the disk."""
    archive = make_archive()
    archive.put_bytes(DATA)  # no reference: garbage after the grace period
    _replicate(archive)
    clock.advance(days=8)
    hidden = _unmount(data_dir / "archive")
    report = gc.run_gc(archive)
    assert list(report.refused) == ["archive"]
    assert "has no identity marker" in report.refused["archive"]
    assert _states(archive, SHA) == {"archive": "present"}  # not claimed, not deleted
    assert _good_file(hidden, SHA)
    _mount(data_dir / "archive", hidden)
    assert gc.run_gc(archive).deleted == 1
    assert not _files(data_dir / "archive", SHA)


def _archive_copy_claimed_by_gc(
    make_archive: ArchiveFactory, clock: FakeClock
) -> tuple[Archive, gc.Claim]:
    """A blob past its grace period, its inbox copy gone, its archive copy claimed by a
    gc that has not deleted it yet."""
    archive = make_archive()
    archive.put_bytes(DATA)
    _replicate(archive)
    clock.advance(days=8)
    gc.run_gc(archive, location="inbox")
    copy_ids = [d.copy_id for d in gc.make_plan(archive, "archive").deletions]
    assert len(copy_ids) == 1
    return archive, gc.claim(archive, copy_ids)


def test_store_is_checked_again_right_before_the_delete(
    make_archive: ArchiveFactory, data_dir: Path, clock: FakeClock
) -> None:
    """The disk goes between the claim and the delete: the delete is refused and the
    claim is left for recovery, never recorded as deleted."""
    archive, claimed = _archive_copy_claimed_by_gc(make_archive, clock)
    hidden = _unmount(data_dir / "archive")
    with pytest.raises(StoreIdentityError):
        gc.process_claimed(archive, "archive", claimed, "test", gc.GcReport())
    assert _states(archive, SHA) == {"archive": "deleting"}
    clock.advance(hours=1)  # the claim is stale, but the empty mount point proves nothing
    assert gc.run_gc(archive).recovered == 0
    assert _states(archive, SHA) == {"archive": "deleting"}
    _mount(data_dir / "archive", hidden)
    # The refused take-over left the claim under a new token, stale again after the
    # claim timeout: the next gc past it finishes the work.
    clock.advance(hours=1)
    report = gc.run_gc(archive)
    assert report.recovered == 1 and report.deleted == 1
    assert not _files(data_dir / "archive", SHA)


def _impostor(root: Path, hidden: Path, sha256: str) -> list[Path]:
    """Another disk mounted in the store's place, holding the same object at the same
    key (a restored backup, a clone) but not the store's marker."""
    placed = []
    for source in _files(hidden, sha256):
        target = root / source.relative_to(hidden)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        placed.append(target)
    assert placed
    return placed


def test_the_delete_touches_nothing_on_a_disk_mounted_in_the_stores_place(
    make_archive: ArchiveFactory, data_dir: Path, clock: FakeClock
) -> None:
    """The marker is read afresh *before* the bulk delete, not only after it: an object
    at the key on another disk is not ours to delete (the read after the delete would
    refuse too, but only once the unlink is done)."""
    archive, claimed = _archive_copy_claimed_by_gc(make_archive, clock)
    hidden = _unmount(data_dir / "archive")
    placed = _impostor(data_dir / "archive", hidden, SHA)
    with pytest.raises(StoreIdentityError):
        gc.process_claimed(archive, "archive", claimed, "test", gc.GcReport())
    assert all(p.is_file() for p in placed)
    assert _states(archive, SHA) == {"archive": "deleting"}


def test_put_into_an_inbox_unmounted_under_a_running_archive(
    make_archive: ArchiveFactory, data_dir: Path, tmp_path: Path
) -> None:
    archive = make_archive()
    archive.put_bytes(b"first")  # the inbox store is open and confirmed
    hidden = _unmount(data_dir / "inbox")
    with pytest.raises(StoreIdentityError, match="store of location 'inbox'"):
        archive.put_bytes(DATA, ref="ns:k")
    source = tmp_path / "file.bin"
    source.write_bytes(DATA)
    files = scan([source])
    with pytest.raises(StoreIdentityError, match="store of location 'inbox'"):
        list(ingest.put_files(archive, files))
    assert list((data_dir / "inbox").iterdir()) == []
    with pytest.raises(NotFound):
        inventory.stat_blob(archive, SHA)
    _mount(data_dir / "inbox", hidden)
    assert archive.put_bytes(DATA, ref="ns:k").stored


def test_move_refuses_another_store(make_archive: ArchiveFactory, data_dir: Path) -> None:
    """Even holding every copy, a store whose marker is not the location's is another
    store (a backup of it, another installation's): the move is refused."""
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    archive.close()
    shutil.copytree(data_dir / "archive", data_dir / "copy")
    (data_dir / "copy" / MARKER_NAME).unlink()
    (data_dir / "copy" / MARKER_NAME).write_bytes(StoreMarker.new("elsewhere").encode())
    config = data_dir / "safekeeper.toml"
    config.write_text(config.read_text().replace('"file:archive"', '"file:copy"'))
    moving = Archive(load_config(data_dir=data_dir, environ={}), moving={"archive"})
    try:
        with pytest.raises(StoreIdentityError, match="it is another store"):
            move_location(moving, "archive", store_url="file:copy")
    finally:
        moving.close()
    (data_dir / "copy" / MARKER_NAME).unlink()
    shutil.copy(data_dir / "inbox" / MARKER_NAME, data_dir / "copy" / MARKER_NAME)
    moving = Archive(load_config(data_dir=data_dir, environ={}), moving={"archive"})
    try:
        with pytest.raises(StoreIdentityError, match="is the store of location 'inbox'"):
            move_location(moving, "archive", store_url="file:copy")
    finally:
        moving.close()
    config.write_text(config.read_text().replace('"file:copy"', '"file:archive"'))
    assert make_archive().store("archive")


def test_gc_checks_the_evidence_stores_before_each_batch(
    make_archive: ArchiveFactory, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However long an identity is trusted between checks, gc reads every store's
    marker before a batch: an empty mount point is neither evidence nor proof that
    the archive copy is gone."""
    monkeypatch.setattr("safekeeper.services.copies.identity.IDENTITY_TTL", 3600.0)
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    assert archive.store("archive")
    hidden = _unmount(data_dir / "archive")
    report = gc.run_gc(archive)
    assert report.deleted == 0
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}
    assert _good_file(data_dir / "inbox", SHA) and _good_file(hidden, SHA)


def test_reconfirmation_reads_the_evidence_stores_markers_itself(
    make_archive: ArchiveFactory, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed copies processed without ``execute_batch``'s marker reads (as recovery
    does): the re-confirmation reads each evidence store's marker afresh, so an archive
    whose disk went away is neither evidence nor condemned as missing."""
    monkeypatch.setattr("safekeeper.services.copies.identity.IDENTITY_TTL", 3600.0)
    archive = make_archive()
    archive.put_bytes(DATA)  # no reference: the inbox copy may go once archived
    _replicate(archive)
    copy_ids = [d.copy_id for d in gc.make_plan(archive, "inbox").deletions]
    assert len(copy_ids) == 1
    claimed = gc.claim(archive, copy_ids)
    hidden = _unmount(data_dir / "archive")
    report = gc.GcReport()
    gc.process_claimed(archive, "inbox", claimed, "test", report)
    assert report.deleted == 0
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}
    assert _good_file(data_dir / "inbox", SHA) and _good_file(hidden, SHA)


def test_reconfirmation_counts_no_object_on_a_disk_mounted_in_the_stores_place(
    make_archive: ArchiveFactory, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the archive's place holds another disk with the right bytes at the
    key: the cached identity would let the re-confirmation find, hash and count them,
    and the only copy still under our marker would go. The fresh marker read refuses
    that disk, so it confirms nothing."""
    monkeypatch.setattr("safekeeper.services.copies.identity.IDENTITY_TTL", 3600.0)
    archive = make_archive()
    archive.put_bytes(DATA)
    _replicate(archive)
    copy_ids = [d.copy_id for d in gc.make_plan(archive, "inbox").deletions]
    assert len(copy_ids) == 1
    claimed = gc.claim(archive, copy_ids)
    hidden = _unmount(data_dir / "archive")
    _impostor(data_dir / "archive", hidden, SHA)
    report = gc.GcReport()
    gc.process_claimed(archive, "inbox", claimed, "test", report)
    assert report.deleted == 0
    assert _states(archive, SHA) == {"inbox": "present", "archive": "present"}
    assert _good_file(data_dir / "inbox", SHA)


def test_reads_skip_a_refused_store(make_archive: ArchiveFactory, data_dir: Path) -> None:
    archive = make_archive()
    archive.put_bytes(DATA, ref="ns:k")
    _replicate(archive)
    archive.close()
    _unmount(data_dir / "inbox")  # the preferred copy's disk is away
    assert make_archive().read_blob(SHA) == DATA  # served from the archive


def test_verify_condemns_nothing_in_a_store_unmounted_since_its_last_check(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    """The identity check is cached for IDENTITY_TTL: a disk unmounted within that
    window answers "not found" for everything, and verify must look at the marker again
    before it calls a copy missing (found by the stateful test at 250 examples)."""
    from safekeeper.services.copies.verify import verify

    archive = make_archive()
    sha = archive.put_bytes(DATA, ref="ns:k").sha256
    _replicate(archive)
    archive.store("archive", fresh=True)  # identity just checked: cached now
    hidden = _unmount(data_dir / "archive")
    # Refusing the store (once it has looked again) is right; condemning its copy is not.
    with pytest.raises(StoreIdentityError):
        verify(archive)
    assert _states(archive, sha)["archive"] == "present"
    _mount(data_dir / "archive", hidden)
    assert verify(archive).missing == []


def test_a_first_use_racing_another_is_not_refused(
    make_archive: ArchiveFactory, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first uses of one store at once (threads of a server, or two processes):
    ours reads no marker, the other writes the marker and records it, then ours reads
    the catalog. The catalog names a store whose marker ours has not seen — but it is
    there now, and ours must take it, not refuse the store as not mounted."""
    from safekeeper.services.copies import identity

    ours, theirs = make_archive(), make_archive()
    read = identity._read

    def read_then_lose_the_race(store: object, location: str) -> str | None:
        monkeypatch.setattr(identity, "_read", read)
        found = read(store, location)  # type: ignore[arg-type]
        theirs.store("archive")  # the other first use: marker written, then recorded
        return found

    monkeypatch.setattr(identity, "_read", read_then_lose_the_race)
    ours.store("archive")  # StoreIdentityError before the fix
    marker = StoreMarker.parse((data_dir / "archive" / MARKER_NAME).read_bytes(), "test")
    assert ours.store("archive", fresh=True) is not None
    with theirs.db.read() as session:
        recorded = session.scalar(select(Location.store_uuid).where(Location.name == "archive"))
    assert recorded == marker.uuid

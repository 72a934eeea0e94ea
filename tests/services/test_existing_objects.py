"""Invariant 11: an object already at a key is hashed before it counts as a copy, and a
wrong one is replaced (content keys) or left alone (another blob's interval key).

Every test checks the bytes in the store (files on disk, objects in the bucket).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from safekeeper.archive import Archive
from safekeeper.cli import app
from safekeeper.db.models import Blob, Copy, CopyState, Location
from safekeeper.engine.embedded import run_due
from safekeeper.errors import BadInput, Conflict, PermanentStoreError
from safekeeper.services.copies import ingest, inventory, replication
from safekeeper.services.copies.existing import Action, Content, judge
from safekeeper.services.copies.tree import scan
from safekeeper.services.copies.verify import verify
from safekeeper.stores.filesystem import FileStore
from tests.conftest import ArchiveFactory
from tests.servers import S3Server

GOOD = b"the good bytes " * 64
#: Same size as GOOD, other bytes: what size-only acceptance would take for GOOD.
WRONG = b"the evil bytes " * 64
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
INTERVAL = {"SAFEKEEPER__LOCATIONS__INBOX__LAYOUT": "interval"}
INTERVAL_ARCHIVE = {"SAFEKEEPER__LOCATIONS__ARCHIVE__LAYOUT": "interval"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file(archive: Archive, location: str, key: str) -> Path:
    store = archive.store(location)
    assert isinstance(store, FileStore)
    return store.root / store.layout.path_for_key(key)


def _plant(archive: Archive, location: str, key: str, data: bytes) -> Path:
    """Behind safekeeper's back: an object at ``key`` (a crashed writer's leftover, a
    tampered or hand-restored file)."""
    path = _file(archive, location, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(data)
    path.chmod(0o444)
    return path


def _state(archive: Archive, sha256: str, location: str) -> str | None:
    states = {c.location: c.state for c in inventory.stat_blob(archive, sha256).copies}
    return states.get(location)


def _present_objects_hash_right(archive: Archive, location: str) -> int:
    """Every present copy at ``location``: its object, at its key, hashes to its blob."""
    with archive.db.read() as session:
        rows = session.execute(
            select(Blob.id, Blob.sha256)
            .join(Copy, Copy.blob_id == Blob.id)
            .join(Location, Copy.location_id == Location.id)
            .where(Location.name == location, Copy.state == CopyState.PRESENT)
        ).all()
    for blob_id, sha256 in rows:
        data = _file(archive, location, archive.key_for(location, sha256, blob_id)).read_bytes()
        assert _sha(data) == sha256, f"present copy of blob {blob_id} holds other bytes"
    return len(rows)


# -- the pure rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("found", "content_key", "held_before", "action"),
    [
        (Content("a", 1), True, False, Action.KEEP),
        (Content("a", 1), False, False, Action.KEEP),
        (Content("b", 1), True, False, Action.REPLACE),  # same size, other bytes
        (Content("b", 2), True, False, Action.REPLACE),
        (Content("b", 1), False, True, Action.REPLACE),  # repairing its own interval key
        (Content("b", 1), False, False, Action.REFUSE),  # another blob's interval key
        (Content("a", 2), False, False, Action.REFUSE),  # right name, wrong size
    ],
)
def test_judge(found: Content, content_key: bool, held_before: bool, action: Action) -> None:
    assert judge(found, Content("a", 1), content_key=content_key, held_before=held_before) == (
        action
    )


# -- ingest -----------------------------------------------------------------------


def test_corrupt_copy_is_rewritten_by_a_put_of_the_good_bytes(archive: Archive) -> None:
    archive.put_bytes(GOOD)
    path = _plant(archive, "inbox", GOOD_SHA, WRONG)  # rot in place, same size
    assert verify(archive, location="inbox").corrupt == [f"{GOOD_SHA} at inbox"]
    outcome = archive.put_bytes(GOOD)
    assert outcome.stored is True  # it wrote: the good bytes were not discarded
    assert path.read_bytes() == GOOD
    assert _state(archive, GOOD_SHA, "inbox") == CopyState.PRESENT
    assert _present_objects_hash_right(archive, "inbox") == 1


def _rot_in_place(path: Path) -> None:
    """Behind safekeeper's back: one byte changed where it is, size and mtime kept."""
    before = path.stat()
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(7)
        byte = f.read(1)
        f.seek(7)
        f.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(0o444)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("how", ["rotted", "removed"])
def test_put_of_bytes_recorded_present_checks_the_object_first(archive: Archive, how: str) -> None:
    """The catalog says the inbox holds the blob, but its object rotted in place (or
    went) since it was hashed, unnoticed: a put with the good bytes in hand must not
    count on it. (The stateful test's 500-example finding: a reference then landed on
    a blob whose only present copy was bad.)"""
    archive.put_bytes(GOOD)
    path = _file(archive, "inbox", GOOD_SHA)
    if how == "rotted":
        _rot_in_place(path)
    else:
        path.unlink()
    outcome = archive.put_bytes(GOOD, ref="ns:kept")
    assert outcome.stored is True  # it wrote the good bytes, not discarded them
    assert path.read_bytes() == GOOD
    assert _state(archive, GOOD_SHA, "inbox") == CopyState.PRESENT
    assert _present_objects_hash_right(archive, "inbox") == 1
    assert archive.read_blob(GOOD_SHA) == GOOD


def test_reading_a_copy_that_rotted_is_an_error_not_wrong_bytes(archive: Archive) -> None:
    archive.put_bytes(GOOD)
    _rot_in_place(_file(archive, "inbox", GOOD_SHA))
    with pytest.raises(PermanentStoreError, match="safekeeper verify"):
        archive.read_blob(GOOD_SHA)


def test_put_of_bytes_recorded_present_and_intact_writes_nothing(archive: Archive) -> None:
    archive.put_bytes(GOOD)
    path = _file(archive, "inbox", GOOD_SHA)
    before = path.stat()
    outcome = archive.put_bytes(GOOD, ref="ns:again")
    assert outcome.stored is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )


def test_wrong_object_at_the_key_before_the_first_put_is_replaced(archive: Archive) -> None:
    path = _plant(archive, "inbox", GOOD_SHA, WRONG)
    assert archive.put_bytes(GOOD).stored is True
    assert path.read_bytes() == GOOD
    other = _file(archive, "inbox", archive.put_bytes(b"another blob").sha256)
    assert path.stat().st_mode & 0o777 == other.stat().st_mode & 0o777  # like any other
    assert _present_objects_hash_right(archive, "inbox") == 2


def test_right_object_at_the_key_is_kept_not_rewritten(archive: Archive) -> None:
    path = _plant(archive, "inbox", GOOD_SHA, GOOD)  # a put that died before its commit
    inode = path.stat().st_ino
    # Adopted: new to the catalog, so it counts as stored (an interrupted put's objects
    # are not "already held"), but the object itself is not rewritten.
    assert archive.put_bytes(GOOD).stored is True
    assert path.stat().st_ino == inode and path.read_bytes() == GOOD
    assert _state(archive, GOOD_SHA, "inbox") == CopyState.PRESENT


def test_tree_put_replaces_wrong_objects_in_a_batch(archive: Archive, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    contents = [f"file {i} ".encode() * 40 for i in range(5)]
    for i, data in enumerate(contents):
        (tree / f"f{i}").write_bytes(data)
    bad = _plant(archive, "inbox", _sha(contents[2]), b"x" * len(contents[2]))
    outcomes = list(ingest.put_files(archive, scan([tree])))
    assert [o.stored for o in outcomes] == [True] * 5
    assert bad.read_bytes() == contents[2]
    assert _present_objects_hash_right(archive, "inbox") == 5


@pytest.mark.s3
def test_corrupt_s3_object_is_rewritten_by_a_put(
    make_archive: ArchiveFactory, moto_server: S3Server
) -> None:
    bucket = moto_server.make_bucket()
    archive = make_archive(
        SAFEKEEPER__LOCATIONS__INBOX__STORE=f"s3://{bucket}/in",
        SAFEKEEPER__LOCATIONS__INBOX__ENDPOINT=moto_server.endpoint,
        SAFEKEEPER__LOCATIONS__INBOX__REGION=moto_server.region,
        SAFEKEEPER__LOCATIONS__INBOX__ACCESS_KEY_ID=moto_server.access_key_id,
        SAFEKEEPER__LOCATIONS__INBOX__SECRET_ACCESS_KEY=moto_server.secret_access_key,
        SAFEKEEPER__LOCATIONS__INBOX__ALLOW_HTTP="true",
    )
    client = moto_server.client()
    client.put_object(Bucket=bucket, Key=f"in/{GOOD_SHA}", Body=WRONG)  # before any put
    assert archive.put_bytes(GOOD).stored is True
    assert client.get_object(Bucket=bucket, Key=f"in/{GOOD_SHA}")["Body"].read() == GOOD
    client.put_object(Bucket=bucket, Key=f"in/{GOOD_SHA}", Body=WRONG)  # rot afterwards
    assert verify(archive, location="inbox").corrupt == [f"{GOOD_SHA} at inbox"]
    assert archive.put_bytes(GOOD).stored is True
    assert client.get_object(Bucket=bucket, Key=f"in/{GOOD_SHA}")["Body"].read() == GOOD
    assert _state(archive, GOOD_SHA, "inbox") == CopyState.PRESENT
    # Rot that no verify has seen yet: the copy is still recorded present.
    client.put_object(Bucket=bucket, Key=f"in/{GOOD_SHA}", Body=WRONG)
    assert archive.put_bytes(GOOD, ref="ns:s3").stored is True
    assert client.get_object(Bucket=bucket, Key=f"in/{GOOD_SHA}")["Body"].read() == GOOD
    assert archive.put_bytes(GOOD, ref="ns:s3-again").stored is False  # right: kept


# -- verify: lost copies whose bytes come back; adoption --------------------------


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_lost_copy_whose_bytes_come_back_is_present_again(archive: Archive, how: str) -> None:
    archive.put_bytes(GOOD)  # the only copy: nothing to repair from
    path = _file(archive, "inbox", GOOD_SHA)
    if how == "missing":
        path.unlink()
    else:
        _plant(archive, "inbox", GOOD_SHA, WRONG)
    report = verify(archive)
    assert getattr(report, how) == [f"{GOOD_SHA} at inbox"]
    assert report.unrepairable == [f"{GOOD_SHA} at inbox"]
    assert verify(archive).restored == []  # still lost: stays lost
    assert _state(archive, GOOD_SHA, "inbox") == how
    _plant(archive, "inbox", GOOD_SHA, GOOD)  # the operator restores the file
    report = verify(archive)
    assert report.restored == [f"{GOOD_SHA} at inbox"] and report.unrepairable == []
    assert _state(archive, GOOD_SHA, "inbox") == CopyState.PRESENT
    assert _present_objects_hash_right(archive, "inbox") == 1


def test_orphan_with_right_name_and_size_but_wrong_bytes_is_not_adopted(
    archive: Archive, data_dir: Path
) -> None:
    path = _plant(archive, "archive", GOOD_SHA, WRONG)
    report = verify(archive, location="archive", adopt=True)
    [orphan] = report.orphans
    assert orphan.outcome == f"content hashes to {_sha(WRONG)}, not its key"
    with archive.db.read() as session:
        assert session.scalar(select(Blob).where(Blob.sha256 == GOOD_SHA)) is None
        assert session.scalars(select(Copy)).all() == []
    assert path.read_bytes() == WRONG  # reported, never deleted
    if archive.db.dialect == "sqlite":
        result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "verify", "--adopt"])
        assert result.exit_code == 0, result.output
        assert f"orphan   archive/{GOOD_SHA} ({len(WRONG)} bytes): content hashes to" in (
            result.output
        )


def test_interval_orphan_with_wrong_bytes_is_not_adopted(make_archive: ArchiveFactory) -> None:
    archive = make_archive(**INTERVAL)
    first = archive.put_bytes(GOOD)
    with archive.db.read() as session:
        blob_id = session.scalars(select(Blob.id).where(Blob.sha256 == first.sha256)).one()
    _file(archive, "inbox", str(blob_id)).unlink()
    with archive.db.write() as session:  # as if the put had died before its commit
        session.execute(Copy.__table__.delete())
    path = _plant(archive, "inbox", str(blob_id), WRONG)
    [orphan] = verify(archive, location="inbox", adopt=True).orphans
    assert orphan.outcome == "content matches no known blob"
    assert path.read_bytes() == WRONG
    assert _state(archive, GOOD_SHA, "inbox") is None


# -- transfer ---------------------------------------------------------------------


def test_transfer_target_with_a_same_size_wrong_object_gets_the_right_bytes(
    archive: Archive,
) -> None:
    archive.put_bytes(GOOD)
    path = _plant(archive, "archive", GOOD_SHA, WRONG)
    replication.replication_pass(archive)
    assert run_due(archive)["done"] == 1
    assert path.read_bytes() == GOOD
    assert _state(archive, GOOD_SHA, "archive") == CopyState.PRESENT
    assert _present_objects_hash_right(archive, "archive") == 1


@pytest.mark.s3
def test_s3_transfer_target_with_a_same_size_wrong_object_gets_the_right_bytes(
    make_archive: ArchiveFactory, moto_server: S3Server
) -> None:
    bucket = moto_server.make_bucket()
    archive = make_archive(
        SAFEKEEPER__LOCATIONS__ARCHIVE__STORE=f"s3://{bucket}/arch",
        SAFEKEEPER__LOCATIONS__ARCHIVE__ENDPOINT=moto_server.endpoint,
        SAFEKEEPER__LOCATIONS__ARCHIVE__REGION=moto_server.region,
        SAFEKEEPER__LOCATIONS__ARCHIVE__ACCESS_KEY_ID=moto_server.access_key_id,
        SAFEKEEPER__LOCATIONS__ARCHIVE__SECRET_ACCESS_KEY=moto_server.secret_access_key,
        SAFEKEEPER__LOCATIONS__ARCHIVE__ALLOW_HTTP="true",
    )
    client = moto_server.client()
    archive.put_bytes(GOOD)
    client.put_object(Bucket=bucket, Key=f"arch/{GOOD_SHA}", Body=WRONG)
    replication.replication_pass(archive)
    assert run_due(archive)["done"] == 1
    assert client.get_object(Bucket=bucket, Key=f"arch/{GOOD_SHA}")["Body"].read() == GOOD
    assert _state(archive, GOOD_SHA, "archive") == CopyState.PRESENT


def test_replacing_from_a_corrupt_source_never_makes_the_copy_present(
    archive: Archive,
) -> None:
    archive.put_bytes(GOOD)
    _plant(archive, "inbox", GOOD_SHA, b"rotten bytes!! " * 64)  # not yet verified
    path = _plant(archive, "archive", GOOD_SHA, WRONG)
    replication.replication_pass(archive)
    run_due(archive)
    assert _state(archive, GOOD_SHA, "archive") != CopyState.PRESENT
    assert _present_objects_hash_right(archive, "archive") == 0
    assert path.read_bytes() != GOOD


def test_repair_of_a_corrupt_interval_copy_rewrites_its_own_key(
    make_archive: ArchiveFactory,
) -> None:
    archive = make_archive(**INTERVAL_ARCHIVE)
    archive.put_bytes(GOOD)
    replication.replication_pass(archive)
    run_due(archive)
    with archive.db.read() as session:
        blob_id = session.scalars(select(Blob.id)).one()
    path = _plant(archive, "archive", str(blob_id), WRONG)
    assert verify(archive, location="archive").repairs_scheduled == 1
    run_due(archive)
    assert path.read_bytes() == GOOD
    assert _state(archive, GOOD_SHA, "archive") == CopyState.PRESENT


# -- interval keys are never handed out twice -------------------------------------


def _boom(*_: object) -> None:
    raise BadInput("the put fails after publishing its object")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def interval_archive(request: pytest.FixtureRequest, make_archive: ArchiveFactory) -> Archive:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return make_archive(url, **INTERVAL)


def _orphan_keys(archive: Archive) -> dict[str, bytes]:
    store = archive.store("inbox")
    return {info.key: b"".join(store.open(info.key)) for info in store.list()}


def test_interval_key_of_a_rolled_back_put_is_not_reused(interval_archive: Archive) -> None:
    archive = interval_archive
    other = b"the other bytes" * 64  # same size as GOOD
    archive.put_bytes(b"first")
    with pytest.raises(BadInput):
        ingest.put_stream(archive, [other], on_record=_boom)
    left = {k: v for k, v in _orphan_keys(archive).items() if v == other}
    assert len(left) == 1  # the rolled-back put's object, under its number
    [(orphan_key, _)] = left.items()
    # A put elsewhere (a fanout location) must not take the number either: the blob
    # would later be copied to the interval location, onto the orphan.
    elsewhere = ingest.put_stream(archive, [b"elsewhere"], location="archive")
    with archive.db.read() as session:
        ids = {sha256: blob_id for sha256, blob_id in session.execute(select(Blob.sha256, Blob.id))}
    assert ids[elsewhere.sha256] != int(orphan_key)
    assert archive.put_bytes(GOOD).stored is True
    assert _present_objects_hash_right(archive, "inbox") == 2
    assert _orphan_keys(archive)[orphan_key] == other  # never overwritten
    with archive.db.read() as session:
        assert int(orphan_key) not in set(session.scalars(select(Blob.id)))
    assert archive.put_bytes(other).stored is True  # its retry takes a new number
    assert _present_objects_hash_right(archive, "inbox") == 3
    assert archive.put_bytes(b"elsewhere").stored is True  # now at the interval inbox
    assert _present_objects_hash_right(archive, "inbox") == 4
    assert _orphan_keys(archive)[orphan_key] == other


KILLED_PUT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from safekeeper.archive import Archive
    from safekeeper.config import load_config
    from safekeeper.services.copies import ingest

    def die(*_):
        os.kill(os.getpid(), signal.SIGKILL)  # object published, transaction open

    with Archive(load_config(data_dir=Path(sys.argv[1]))) as archive:
        ingest.put_stream(archive, [b"the other bytes" * 64], on_record=die)
    """
)


def test_interval_key_of_a_killed_put_is_not_reused(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    archive = make_archive(**INTERVAL)
    archive.put_bytes(b"first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    env.update(INTERVAL)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_PUT, str(data_dir)], env=env, capture_output=True
    )
    assert killed.returncode == -9, killed.stderr.decode()
    other = b"the other bytes" * 64
    [orphan_key] = [k for k, v in _orphan_keys(archive).items() if v == other]
    assert archive.put_bytes(GOOD).stored is True  # same size as the orphan
    assert _present_objects_hash_right(archive, "inbox") == 2
    assert _orphan_keys(archive)[orphan_key] == other


def test_replicate_after_a_database_restore_never_overwrites_another_blobs_object(
    make_archive: ArchiveFactory, data_dir: Path, tmp_path: Path
) -> None:
    archive = make_archive(**INTERVAL_ARCHIVE)
    database = data_dir / "safekeeper.db"
    assert database.exists()
    archive.put_bytes(b"first blob")
    replication.replication_pass(archive)
    run_due(archive)
    backup = tmp_path / "backup.db"
    live, copy = sqlite3.connect(database), sqlite3.connect(backup)
    live.backup(copy)
    live.close()
    copy.close()
    other = b"the other bytes" * 64
    archive.put_bytes(other)
    replication.replication_pass(archive)
    assert run_due(archive)["done"] == 1
    with archive.db.read() as session:
        other_id = session.scalars(select(Blob.id).where(Blob.sha256 == _sha(other))).one()
    archived = _file(archive, "archive", str(other_id))
    assert archived.read_bytes() == other
    archive.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, database)  # the operator restores last night's backup

    restored = make_archive(**INTERVAL_ARCHIVE)
    restored.put_bytes(GOOD)  # same size as ``other``; the counter was rewound too
    with restored.db.read() as session:
        good_id = session.scalars(select(Blob.id).where(Blob.sha256 == GOOD_SHA)).one()
    assert good_id == other_id  # the rewound number: the case the guard is for
    replication.replication_pass(restored)
    run_due(restored)
    assert archived.read_bytes() == other  # the only archive bytes of ``other`` survive
    assert _state(restored, GOOD_SHA, "archive") != CopyState.PRESENT
    assert _present_objects_hash_right(restored, "archive") == 1


def test_blob_ids_always_pass_the_highest_existing_id(make_archive: ArchiveFactory) -> None:
    """A row inserted past the counter (an older version, a hand repair) never makes
    the counter hand out its number or a smaller one."""
    archive = make_archive()
    archive.put_bytes(b"one")
    with archive.db.write() as session:
        session.add(Blob(id=1000, sha256="f" * 64, size=1, created_at=archive.clock()))
    outcome = archive.put_bytes(b"two")
    with archive.db.read() as session:
        new_id = session.scalars(select(Blob.id).where(Blob.sha256 == outcome.sha256)).one()
    assert new_id > 1000


def test_a_put_into_an_interval_location_needs_reserved_ids(
    make_archive: ArchiveFactory,
) -> None:
    archive = make_archive(**INTERVAL)
    with (
        archive.store("inbox").stage([b"bytes"]) as staged,
        archive.db.write() as session,
        pytest.raises(Conflict, match="reserved"),
    ):
        ingest.record_staged(archive, session, "inbox", [staged], archive.clock())
    assert list(archive.store("inbox").list()) == []


def _interval_present_hash_right(data_dir: Path) -> int:
    from safekeeper.config import load_config

    with Archive(load_config(data_dir=data_dir, environ=dict(INTERVAL))) as archive:
        return _present_objects_hash_right(archive, "inbox")


@pytest.mark.slow
def test_sigkill_during_interval_puts_never_reuses_a_number(tmp_path: Path) -> None:
    """Puts of new content into an interval inbox, SIGKILLed at random moments: every
    present copy's object always hashes to its blob (no number of a killed put is ever
    given to the next put's blobs)."""
    import random
    import signal
    import time

    from safekeeper.config import write_default

    rng = random.Random(20261201)
    data_dir = tmp_path / "data"
    write_default(data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    env.update(INTERVAL)

    def tree(n: int) -> Path:
        root = tmp_path / f"tree-{n}"
        root.mkdir()
        for i in range(700):
            size = 4096 if i % 2 else rng.randint(1, 2048)  # many equal sizes
            (root / f"f{i:03d}").write_bytes(rng.randbytes(size))
        return root

    def put(root: Path) -> list[str]:
        return [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "put", str(root)]

    started = time.monotonic()
    subprocess.run(put(tree(0)), env=env, check=True, capture_output=True)
    duration = time.monotonic() - started
    trees = [tmp_path / "tree-0"]
    killed = 0
    for n in range(1, 13):
        trees.append(tree(n))
        process = subprocess.Popen(put(trees[-1]), env=env, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.95) * duration)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        else:
            duration *= 0.7  # the machine got faster (a shared one): aim earlier
        assert process.wait() in (0, -signal.SIGKILL)
        _interval_present_hash_right(data_dir)
    assert killed >= 4, "the kills should mostly land mid-put"
    for root in trees:  # finish every put: each file present, at its own number
        subprocess.run(put(root), env=env, check=True, capture_output=True)
    distinct = {_sha(p.read_bytes()) for root in trees for p in root.iterdir()}
    assert _interval_present_hash_right(data_dir) == len(distinct)


def test_tree_put_repairs_a_rotted_copy_recorded_present(archive: Archive, tmp_path: Path) -> None:
    """A directory put goes the batch way (``record_staged``): a copy recorded present
    is hashed there too, and repaired from the staged bytes."""
    archive.put_bytes(GOOD)
    path = _file(archive, "inbox", GOOD_SHA)
    _rot_in_place(path)
    tree = tmp_path / "tree"
    tree.mkdir()
    for i, data in enumerate([GOOD, b"another file"]):
        (tree / f"f{i}").write_bytes(data)
    outcomes = list(ingest.put_files(archive, scan([tree])))
    assert [o.stored for o in outcomes] == [True, True]
    assert path.read_bytes() == GOOD
    assert _present_objects_hash_right(archive, "inbox") == 2

"""Re-confirmation before a physical delete, checked against the bytes in the stores.

gc relies on other copies of a blob to delete one copy; before the delete each of
them is re-confirmed in its store against change (fingerprint, re-hash of the last
one), and only re-confirmed copies count for the floor (invariants 2, 11, 12).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Copy, Location
from safekeeper.engine.embedded import run_due
from safekeeper.policy import Evidence, OtherCopy
from safekeeper.services.copies import inventory, replication
from safekeeper.services.copies.verify import verify
from safekeeper.services.deletion import gc, recheck, reconfirm
from safekeeper.services.operations import audit
from tests.conftest import FakeClock
from tests.servers import S3Server

DATA = b"precious bytes " * 300
OTHER = b"PRECIOUS BYTES " * 300  # same size, other bytes
SHA = hashlib.sha256(DATA).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def opened() -> Iterator[list[Archive]]:
    archives: list[Archive] = []
    yield archives
    for archive in archives:
        archive.close()


def _open(
    tmp_path: Path, clock: FakeClock, opened: list[Archive], toml: str, **env: str
) -> Archive:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "safekeeper.toml").write_text(toml)
    archive = Archive(load_config(data_dir=data_dir, environ=env), clock=clock)
    opened.append(archive)
    return archive


DEFAULT = """
[locations.inbox]
kind = "source"
store = "file:inbox"

[locations.archive]
kind = "archive"
store = "file:archive"
"""


def _rehash_max(value: str | None) -> dict[str, str]:
    """None: the default (64 MiB); "0": re-hash only on a changed fingerprint."""
    return {} if value is None else {"SAFEKEEPER__POLICY__GC_REHASH_MAX_SIZE": value}


def _states(archive: Archive) -> dict[str, str]:
    return {c.location: c.state for c in inventory.stat_blob(archive, SHA).copies}


def _replicate(archive: Archive) -> None:
    replication.replication_pass(archive)
    run_due(archive)


def _file(archive: Archive, location: str) -> Path:
    return (
        Path(archive.config.store_url(location).removeprefix("file://")) / SHA[:2] / SHA[2:4] / SHA
    )


def _overwrite_in_place(path: Path, data: bytes, keep_mtime: bool = False) -> None:
    """Other bytes of the same size written into the same inode, as a bad disk or a
    careless tool would."""
    before = path.stat()
    path.chmod(0o644)
    with path.open("r+b") as out:
        out.write(data)
    if keep_mtime:  # hide it from the mtime: only the ctime still tells
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_ino == before.st_ino and path.stat().st_size == before.st_size


def _fingerprint(archive: Archive, location: str) -> str | None:
    with archive.db.read() as session:
        return session.scalar(
            select(Copy.fingerprint)
            .join(Location, Copy.location_id == Location.id)
            .where(Location.name == location, Copy.state == "present")
        )


# -- file stores ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rehash_max", "keep_mtime"),
    [(None, False), ("0", False), ("0", True)],
    ids=["last-copy-rehashed", "fingerprint-changed", "fingerprint-ctime-only"],
)
def test_same_size_overwrite_in_place_keeps_the_inbox_copy(
    tmp_path: Path,
    clock: FakeClock,
    opened: list[Archive],
    rehash_max: str | None,
    keep_mtime: bool,
) -> None:
    archive = _open(tmp_path, clock, opened, DEFAULT, **_rehash_max(rehash_max))
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)
    assert _states(archive) == {"archive": "present", "inbox": "present"}
    _overwrite_in_place(_file(archive, "archive"), OTHER, keep_mtime)

    report = gc.run_gc(archive)

    assert report.deleted == 0
    assert _states(archive) == {"archive": "corrupt", "inbox": "present"}
    assert _sha(_file(archive, "inbox").read_bytes()) == SHA  # the good copy is on disk
    assert _file(archive, "archive").read_bytes() == OTHER  # gc deleted nothing
    assert [(b, loc) for b, loc, _, _ in report.kept_on_recheck] == [(SHA, "inbox")]


def test_fingerprints_are_recorded_and_refreshed(
    tmp_path: Path, clock: FakeClock, opened: list[Archive]
) -> None:
    archive = _open(tmp_path, clock, opened, DEFAULT)
    archive.put_bytes(DATA, ref="proj:data")
    stat = archive.store("inbox").stat(SHA)
    assert _fingerprint(archive, "inbox") == stat.fingerprint is not None  # ingest
    _replicate(archive)
    archive_path = _file(archive, "archive")
    assert _fingerprint(archive, "archive") == archive.store("archive").stat(SHA).fingerprint
    # Restored from a backup (new inode, same bytes): changed fingerprint, right bytes.
    restored = archive_path.with_name("restored")
    restored.write_bytes(DATA)
    os.replace(restored, archive_path)
    clock.advance(days=1)
    assert gc.run_gc(archive).deleted == 1
    assert _states(archive) == {"archive": "present"}
    assert _fingerprint(archive, "archive") == archive.store("archive").stat(SHA).fingerprint
    [entry] = audit.read_audit(archive, blob=SHA)
    assert entry.evidence["other_copies"][0]["confirmed_in_store"] is True


# -- the floor is physical -----------------------------------------------------------


FLOOR = """
[policy]
min_archive_copies = 0

[locations.inbox]
kind = "source"
store = "file:inbox"
replicate_to = ["backup"]

[locations.backup]
kind = "buffer"
store = "file:backup"
retention = "3650d"
"""


@pytest.mark.parametrize("damage", ["deleted", "overwritten"])
def test_min_archive_copies_zero_keeps_the_last_physical_copy(
    tmp_path: Path, clock: FakeClock, opened: list[Archive], damage: str
) -> None:
    """min_archive_copies = 0: the replicate_to copy is the floor, and only counts when
    it is really there with the right bytes."""
    archive = _open(tmp_path, clock, opened, FLOOR)
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)
    backup = _file(archive, "backup")
    if damage == "deleted":
        backup.unlink()  # behind safekeeper's back
    else:
        _overwrite_in_place(backup, OTHER)

    report = gc.run_gc(archive)

    assert report.deleted == 0
    expected = "missing" if damage == "deleted" else "corrupt"
    assert _states(archive) == {"backup": expected, "inbox": "present"}
    assert _sha(_file(archive, "inbox").read_bytes()) == SHA


def test_min_archive_copies_zero_deletes_on_a_reconfirmed_copy(
    tmp_path: Path, clock: FakeClock, opened: list[Archive]
) -> None:
    archive = _open(tmp_path, clock, opened, FLOOR)
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)
    assert gc.run_gc(archive).deleted == 1
    assert not _file(archive, "inbox").exists()
    assert _sha(_file(archive, "backup").read_bytes()) == SHA
    [entry] = audit.read_audit(archive, blob=SHA)
    assert [o["confirmed_in_store"] for o in entry.evidence["other_copies"]] == [True]


TWO_ARCHIVES = """
[locations.inbox]
kind = "source"
store = "file:inbox"
replicate_to = ["tape-a", "tape-b"]

[locations.tape-a]
kind = "archive"
store = "file:tape-a"

[locations.tape-b]
kind = "archive"
store = "file:tape-b"
"""


def test_no_delete_while_the_evidence_shows_a_copy_gone(
    tmp_path: Path, clock: FakeClock, opened: list[Archive]
) -> None:
    """One archive copy is enough, but gc does not delete on evidence that says
    ``confirmed_in_store: false`` for another: verify looks first."""
    archive = _open(tmp_path, clock, opened, TWO_ARCHIVES)
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)
    _file(archive, "tape-b").unlink()
    report = gc.run_gc(archive)
    assert report.deleted == 0
    assert _states(archive) == {"inbox": "present", "tape-a": "present", "tape-b": "missing"}
    assert "tape-b" in report.kept_on_recheck[0][3]
    assert _file(archive, "inbox").exists()
    # Next run: the missing copy no longer counts, the damage is known; one verified
    # archive copy is enough again.
    assert gc.run_gc(archive).deleted == 1
    assert _sha(_file(archive, "tape-a").read_bytes()) == SHA


# -- S3 (moto) -----------------------------------------------------------------------


@pytest.mark.parametrize("rehash_max", [None, "0"], ids=["rehashed", "etag-changed"])
def test_same_size_overwrite_in_an_s3_archive(
    tmp_path: Path,
    clock: FakeClock,
    opened: list[Archive],
    moto_server: S3Server,
    rehash_max: str | None,
) -> None:
    bucket = moto_server.make_bucket()
    toml = f"""
[locations.inbox]
kind = "source"
store = "file:inbox"

[locations.archive]
kind = "archive"
store = "s3://{bucket}/objects"
endpoint = "{moto_server.endpoint}"
region = "{moto_server.region}"
access_key_id = "{moto_server.access_key_id}"
secret_access_key = "{moto_server.secret_access_key}"
allow_http = true
"""
    archive = _open(tmp_path, clock, opened, toml, **_rehash_max(rehash_max))
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)
    assert _states(archive) == {"archive": "present", "inbox": "present"}
    s3 = moto_server.client()
    s3.put_object(Bucket=bucket, Key=f"objects/{SHA}", Body=OTHER)  # overwritten in place

    assert gc.run_gc(archive).deleted == 0

    assert _states(archive) == {"archive": "corrupt", "inbox": "present"}
    assert _sha(_file(archive, "inbox").read_bytes()) == SHA
    assert s3.get_object(Bucket=bucket, Key=f"objects/{SHA}")["Body"].read() == OTHER


# -- what the fingerprint cannot see; the batch deadline -------------------------------


def _pretend_fingerprint_unchanged(archive: Archive, location: str) -> None:
    """As if the rewrite happened within the clock tick of the verification: the
    recorded fingerprint equals what the store reports now."""
    now = archive.store(location).stat(SHA).fingerprint
    with archive.db.write() as session:
        session.execute(
            update(Copy)
            .where(Copy.state == "present")
            .where(
                Copy.location_id
                == select(Location.id).where(Location.name == location).scalar_subquery()
            )
            .values(fingerprint=now)
        )


@pytest.mark.parametrize(("rehash_max", "deleted"), [(None, 0), ("0", 1)])
def test_the_last_copy_is_rehashed_where_the_fingerprint_is_blind(
    tmp_path: Path, clock: FakeClock, opened: list[Archive], rehash_max: str | None, deleted: int
) -> None:
    """The last other copy, when small enough, is re-hashed whatever its fingerprint
    says; with re-hashing off (0) the fingerprint is all there is — the documented
    residual risk, bounded by verify_max_age."""
    archive = _open(tmp_path, clock, opened, DEFAULT, **_rehash_max(rehash_max))
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)
    _overwrite_in_place(_file(archive, "archive"), OTHER)
    _pretend_fingerprint_unchanged(archive, "archive")
    assert gc.run_gc(archive).deleted == deleted
    if deleted == 0:
        assert _states(archive) == {"archive": "corrupt", "inbox": "present"}
        assert _sha(_file(archive, "inbox").read_bytes()) == SHA


def test_checks_not_started_by_the_deadline_count_for_nothing(
    tmp_path: Path, clock: FakeClock, opened: list[Archive], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _open(tmp_path, clock, opened, FLOOR)
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)

    class Late:
        @staticmethod
        def monotonic() -> float:
            return float("inf")  # every batch's deadline has passed

    monkeypatch.setattr(reconfirm, "time", Late)
    report = gc.run_gc(archive)
    assert report.deleted == 0
    assert "no other copy re-confirmed" in report.kept_on_recheck[0][3]
    assert _states(archive) == {"backup": "present", "inbox": "present"}  # nothing condemned
    assert _file(archive, "inbox").exists()


def test_verify_records_the_fingerprint_it_hashed(
    tmp_path: Path, clock: FakeClock, opened: list[Archive]
) -> None:
    archive = _open(tmp_path, clock, opened, DEFAULT)
    archive.put_bytes(DATA, ref="proj:data")
    _replicate(archive)
    path = _file(archive, "archive")
    restored = path.with_name("restored")
    restored.write_bytes(DATA)
    os.replace(restored, path)  # same bytes, new inode: the recorded fingerprint is stale
    assert _fingerprint(archive, "archive") != archive.store("archive").stat(SHA).fingerprint
    assert verify(archive, location="archive").ok == 1
    assert _fingerprint(archive, "archive") == archive.store("archive").stat(SHA).fingerprint


def test_the_recheck_keeps_every_field_of_the_evidence() -> None:
    """gc's re-check rebuilds the evidence field by field for the re-confirmed decision
    (``dataclasses.replace`` cost more than the decision): a field added to
    ``Evidence`` later must not fall back to its default there."""
    moment = datetime(2026, 1, 2, tzinfo=UTC)
    others = (
        OtherCopy("archive", "archive", "present", moment),
        OtherCopy("tape", "archive", "missing", None),
    )
    values: dict[str, object] = {
        "location": "inbox",
        "state": "present",
        "created_at": moment,
        "unreferenced_since": moment - timedelta(days=3),
        "held": True,
        "transfer_source": True,
        "needed_by_job": True,
        "others": others,
        "reconfirmed": False,
    }
    # Every field is set above to something other than its default, so a forgotten
    # one shows up as a difference.
    assert set(values) == {f.name for f in fields(Evidence)}
    ev = Evidence(**values)  # type: ignore[arg-type]
    rebuilt = recheck._reconfirmed(ev, {"archive": True, "tape": None})
    expected = replace(
        ev,
        others=(replace(others[0], confirmed=True), replace(others[1], confirmed=None)),
        reconfirmed=True,
    )
    assert rebuilt == expected

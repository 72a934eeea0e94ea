"""verify: marks missing/corrupt copies, repairs them from good copies, finds orphans."""

from __future__ import annotations

import hashlib
import random
from datetime import timedelta
from pathlib import Path

import pytest

from safekeeper.archive import Archive
from safekeeper.engine.embedded import run_due
from safekeeper.errors import BadInput
from safekeeper.services.copies import inventory, replication
from safekeeper.services.copies.verify import verify
from tests.conftest import FakeClock


def _object_path(archive: Archive, location: str, blob: str) -> Path:
    root = Path(archive.config.store_url(location).removeprefix("file://"))
    return next(root.rglob(blob))


def _replicated(archive: Archive, count: int) -> list[str]:
    blobs = [archive.put_bytes(f"content {i}".encode() * 50).sha256 for i in range(count)]
    replication.replication_pass(archive)
    run_due(archive)
    return blobs


def _states(archive: Archive, blob: str) -> dict[str, str]:
    return {c.location: c.state for c in inventory.stat_blob(archive, blob).copies}


def test_flipped_byte_is_marked_corrupt_and_repaired(archive: Archive) -> None:
    blobs = _replicated(archive, 3)
    path = _object_path(archive, "archive", blobs[1])
    data = bytearray(path.read_bytes())
    data[7] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    report = verify(archive, location="archive")
    assert report.checked == 3 and report.ok == 2
    assert report.corrupt == [f"{blobs[1]} at archive"]
    assert report.repairs_scheduled == 1
    assert _states(archive, blobs[1])["archive"] == "pending"
    assert run_due(archive)["done"] == 1
    assert _states(archive, blobs[1])["archive"] == "present"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == blobs[1]
    assert verify(archive).corrupt == []


def test_object_deleted_behind_our_back_is_marked_missing_and_rereplicated(
    archive: Archive,
) -> None:
    blobs = _replicated(archive, 2)
    _object_path(archive, "archive", blobs[0]).unlink()
    report = verify(archive)
    assert report.missing == [f"{blobs[0]} at archive"]
    run_due(archive)
    assert _states(archive, blobs[0]) == {"archive": "present", "inbox": "present"}
    assert archive.store("archive").exists(blobs[0])


def test_no_good_copy_left_is_reported_not_deleted(archive: Archive) -> None:
    blob = archive.put_bytes(b"alone").sha256
    path = _object_path(archive, "inbox", blob)
    path.chmod(0o644)
    path.write_bytes(b"ALONE")
    report = verify(archive)
    assert report.corrupt == [f"{blob} at inbox"]
    assert report.unrepairable == [f"{blob} at inbox"]
    assert path.exists()  # verify never deletes


def test_orphans_are_listed_and_adopted_only_when_they_hash_to_their_key(
    archive: Archive,
) -> None:
    good = b"left by a put that died before its commit"
    good_key = hashlib.sha256(good).hexdigest()
    store = archive.store("inbox")
    store.put(good_key, [good])
    bad_key = hashlib.sha256(b"something else").hexdigest()
    store.put(bad_key, [b"not what the key says"])
    listed = verify(archive, location="inbox")
    assert sorted((o.key, o.outcome) for o in listed.orphans) == sorted(
        [(good_key, "not adopted"), (bad_key, "not adopted")]
    )
    adopted = verify(archive, location="inbox", adopt=True)
    outcomes = {o.key: o.outcome for o in adopted.orphans}
    assert outcomes[good_key] == "adopted"
    assert outcomes[bad_key].startswith("content hashes to")
    assert _states(archive, good_key) == {"inbox": "present"}
    assert store.exists(bad_key)  # listed for the operator, never deleted
    assert [o.key for o in verify(archive, location="inbox").orphans] == [bad_key]


def test_sample_and_older_than(archive: Archive, clock: FakeClock) -> None:
    _replicated(archive, 10)  # 20 present copies, verified at ingest/transfer time
    clock.advance(days=40)
    sampled = verify(archive, sample=0.5, rng=random.Random(7))
    assert 0 < sampled.checked < 20
    clock.advance(days=1)
    # Those just sampled were verified a day ago; the others 41 days ago.
    rest = verify(archive, older_than=timedelta(days=30))
    assert rest.checked == 20 - sampled.checked
    assert verify(archive, older_than=timedelta(days=30)).checked == 0
    with pytest.raises(BadInput, match="--sample"):
        verify(archive, sample=1.5)

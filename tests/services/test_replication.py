"""Replication passes and verified transfers (embedded executor)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlalchemy import func, select, update

from safekeeper.archive import Archive
from safekeeper.config import write_default
from safekeeper.db.models import Copy, CopyState, Task
from safekeeper.engine.embedded import run_due
from safekeeper.services.copies import inventory, replication
from safekeeper.stores.base import PutResult, Store
from tests.conftest import ArchiveFactory


def _states(archive: Archive, blob: str) -> dict[str, str]:
    return {c.location: c.state for c in inventory.stat_blob(archive, blob).copies}


def test_put_then_replicate_leaves_a_verified_archive_copy(archive: Archive) -> None:
    payloads = [f"payload {i:02d}".encode() * 100 for i in range(20)]
    blobs = [archive.put_bytes(data).sha256 for data in payloads]
    result = replication.replication_pass(archive)
    assert (result.wanted, result.scheduled) == (20, 20)
    assert run_due(archive)["done"] == 20
    for blob in blobs:
        copies = {c.location: c for c in inventory.stat_blob(archive, blob).copies}
        assert copies["archive"].state == CopyState.PRESENT
        assert copies["archive"].verified_at is not None
        assert archive.store("archive").stat(blob).size == len(payloads[0])
    # A second pass finds nothing to do: the policy is met.
    again = replication.replication_pass(archive)
    assert (again.wanted, again.scheduled) == (0, 0)


def test_concurrent_passes_schedule_each_copy_once(archive: Archive) -> None:
    archive.put_bytes(b"only once")
    first = replication.replication_pass(archive)
    second = replication.replication_pass(archive)  # before any task ran
    assert first.scheduled == 1 and second.scheduled == 0
    with archive.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1


def test_replicate_to_and_min_archive_copies(tmp_path: Path, make_archive: ArchiveFactory) -> None:
    data_dir = tmp_path / "multi"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_text(
        """
[policy]
min_archive_copies = 2

[locations.inbox]
kind = "source"
store = "file:inbox"
replicate_to = ["buffer"]

[locations.buffer]
kind = "buffer"
store = "file:buffer"

[locations.tape-a]
kind = "archive"
store = "file:tape-a"

[locations.tape-b]
kind = "archive"
store = "file:tape-b"

[locations.tape-c]
kind = "archive"
store = "file:tape-c"
"""
    )
    from safekeeper.config import load_config

    archive = Archive(load_config(data_dir=data_dir, environ={}))
    try:
        blob = archive.put_bytes(b"policy").sha256
        result = replication.replication_pass(archive)
        assert result.wanted == 3  # buffer + two of the three archives
        run_due(archive)
        assert _states(archive, blob) == {
            "inbox": "present",
            "buffer": "present",
            "tape-a": "present",
            "tape-b": "present",
        }
    finally:
        archive.close()


def test_transfer_prefers_a_source_at_the_targets_site(tmp_path: Path) -> None:
    # Checked through the task's source: with two present copies, the one at the
    # target's site is chosen.
    data_dir = tmp_path / "sites"
    write_default(data_dir)
    text = (data_dir / "safekeeper.toml").read_text()
    text = text.replace('[locations.archive]\nkind = "archive"\nsite = "local"',
                        '[locations.archive]\nkind = "archive"\nsite = "far"')  # fmt: skip
    text += '\n[sites.far]\n\n[locations.far-buffer]\nkind = "buffer"\nsite = "far"\n'
    text += 'store = "file:far-buffer"\n'
    (data_dir / "safekeeper.toml").write_text(text)
    from safekeeper.config import load_config
    from safekeeper.services.copies.ingest import put_stream

    archive = Archive(load_config(data_dir=data_dir, environ={}))
    try:
        blob = archive.put_bytes(b"two sources").sha256
        put_stream(archive, [b"two sources"], location="far-buffer")
        replication.replication_pass(archive)
        with archive.db.read() as session:
            task = session.scalars(select(Task)).one()
            source = session.get_one(Copy, task.source_copy_id)
            from safekeeper.db.models import Location

            assert session.get_one(Location, source.location_id).name == "far-buffer"
        run_due(archive)
        assert _states(archive, blob)["archive"] == "present"
    finally:
        archive.close()


def test_transfer_of_mismatching_bytes_is_not_verified(archive: Archive) -> None:
    data = b"the real bytes"
    blob = archive.put_bytes(data).sha256
    # The inbox object rots after ingest: the transfer must notice, not record it.
    inbox_path = Path(archive.config.store_url("inbox").removeprefix("file://"))
    target = next(p for p in inbox_path.rglob(blob))
    target.chmod(0o644)
    target.write_bytes(b"rotten bytes!!")
    replication.replication_pass(archive)
    assert run_due(archive)["queued"] == 1  # transient: retried later
    assert _states(archive, blob)["archive"] == CopyState.PENDING
    assert not archive.store("archive").exists(blob)  # the bad object was removed
    with archive.db.read() as session:
        copy = session.scalars(select(Copy).where(Copy.state == CopyState.PENDING)).one()
        assert "checksum mismatch" in (copy.last_error or "")
        assert copy.retries == 1
    assert hashlib.sha256(data).hexdigest() == blob


class CorruptingWrites:
    """A target store that flips one byte of whatever is written to it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def put(self, key: str, source: Iterable[bytes]) -> PutResult:
        def flipped() -> Iterator[bytes]:
            first = True
            for chunk in source:
                if first and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    first = False
                yield chunk

        return self.inner.put(key, flipped())

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_target_corrupted_mid_transfer_is_not_verified(archive: Archive) -> None:
    blob = archive.put_bytes(b"must arrive intact" * 100).sha256
    real_target = archive.store("archive")
    archive._stores["archive"] = CorruptingWrites(real_target)  # type: ignore[assignment]
    replication.replication_pass(archive)
    assert run_due(archive) == {"queued": 1}  # a transient failure: retried later
    assert _states(archive, blob)["archive"] == CopyState.PENDING
    assert not real_target.exists(blob)  # the bad bytes were removed, not kept
    archive._stores["archive"] = real_target  # the fault clears
    with archive.db.write() as session:  # don't wait out the backoff
        session.execute(update(Task).values(not_before=archive.clock()))
    assert run_due(archive) == {"done": 1}
    assert _states(archive, blob)["archive"] == CopyState.PRESENT
    assert hashlib.sha256(b"".join(real_target.open(blob))).hexdigest() == blob

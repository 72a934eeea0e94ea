"""Ingest: dedup, references, directories, adoption of orphans, nothing half-written."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from safekeeper.archive import STALE_TEMP_SECONDS, Archive
from safekeeper.db.models import Blob, Copy, CopyState
from safekeeper.errors import BadInput, NotFound
from safekeeper.ids import RefSpec
from safekeeper.services.copies import ingest, inventory
from safekeeper.services.copies.tree import TreeFile, scan
from tests.conftest import ArchiveFactory


def _count(archive: Archive, model: type[Blob] | type[Copy]) -> int:
    with archive.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _objects(archive: Archive, location: str = "inbox") -> list[str]:
    return sorted(info.key for info in archive.store(location).list())


def test_put_records_blob_and_present_copy(archive: Archive) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    outcome = archive.put_bytes(data, ref="proj:raw/a.bin")
    assert outcome.sha256 == hashlib.sha256(data).hexdigest()
    assert outcome.size == len(data)
    assert outcome.stored
    status = inventory.stat_blob(archive, "proj:raw/a.bin")
    assert [(c.location, c.state) for c in status.copies] == [("inbox", CopyState.PRESENT)]
    assert status.copies[0].verified_at is not None
    assert status.unreferenced_since is None
    assert archive.read_blob(outcome.sha256) == data


def test_same_content_twice_is_one_object_and_one_row(archive: Archive) -> None:
    first = archive.put_bytes(b"same bytes")
    second = archive.put_bytes(b"same bytes", ref="ns:k")
    assert first.sha256 == second.sha256
    assert (first.stored, second.stored) == (True, False)
    assert _count(archive, Blob) == 1
    assert _count(archive, Copy) == 1
    assert _objects(archive) == [first.sha256]


def test_empty_input_is_a_blob(archive: Archive) -> None:
    outcome = archive.put_bytes(b"")
    assert outcome.sha256 == hashlib.sha256(b"").hexdigest()
    assert archive.read_blob(outcome.sha256) == b""


def test_directory_put_with_reference_per_file(archive: Archive, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    contents = {"a.txt": b"alpha", "sub/b.txt": b"beta", "sub/deeper/c.txt": b"alpha"}
    for relative, data in contents.items():
        (tree / relative).write_bytes(data)
    (tree / "link").symlink_to(tree / "a.txt")  # links are not content: skipped
    files = scan([tree])
    assert [f.relative for f in files] == ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]
    outcomes = list(
        ingest.put_files(archive, files, RefSpec("site", "docs", "v1"), key_per_file=True)
    )
    assert [o.stored for o in outcomes] == [True, True, False]  # c.txt duplicates a.txt
    refs = {str(r.spec): r.blob for r in inventory.list_refs(archive, "site")}
    assert refs == {
        f"site:docs/{relative}:v1": hashlib.sha256(data).hexdigest()
        for relative, data in contents.items()
    }
    assert _count(archive, Blob) == 2


def test_many_files_cross_batches(archive: Archive, tmp_path: Path) -> None:
    tree = tmp_path / "many"
    tree.mkdir()
    count = ingest.BATCH_SIZE * 2 + 5
    for i in range(count):
        (tree / f"f{i:04d}").write_bytes(f"file {i}".encode())
    outcomes = list(ingest.put_files(archive, scan([tree])))
    assert len(outcomes) == count and all(o.stored for o in outcomes)
    assert _count(archive, Copy) == count
    assert len(_objects(archive)) == count
    # no temp files left behind by the staging threads
    root = Path(archive.config.store_url("inbox").removeprefix("file://"))
    assert list((root / ".tmp").iterdir()) == []


def test_batches_close_at_a_count_or_a_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "BATCH_SIZE", 3)
    monkeypatch.setattr(ingest, "BATCH_BYTES", 100)
    sizes = [10, 10, 10, 10, 60, 50, 500, 1, 1]
    files = [
        TreeFile(Path(f"f{i}"), f"f{i}", size, f"f{i}", f"f{i}") for i, size in enumerate(sizes)
    ]
    batches = [list(batch) for batch in ingest._batches(files)]
    # 3 files at most; a file that would pass 100 bytes starts a new batch; a file
    # bigger than that alone is a batch of its own
    assert batches == [[0, 1, 2], [3, 4], [5], [6], [7, 8]]
    assert list(ingest._batches([])) == []


def test_failure_in_a_later_batch_keeps_the_earlier_ones(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch k+1 is staged while batch k records: a file of batch k+1 that cannot be
    read stops the put after batch k is recorded, and leaves nothing of k+1 behind —
    no row, no object, no temp file."""
    monkeypatch.setattr(ingest, "BATCH_SIZE", 4)
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(10):
        (tree / f"f{i}").write_bytes(f"file {i}".encode())
    files = scan([tree])
    (tree / "f6").unlink()  # in the second batch
    outcomes = []
    with pytest.raises(BadInput, match="f6: cannot read"):
        for outcome in ingest.put_files(archive, files):
            outcomes.append(outcome)
    assert len(outcomes) == 4 and all(o.stored for o in outcomes)
    assert _count(archive, Blob) == 4 and _count(archive, Copy) == 4
    assert len(_objects(archive)) == 4
    root = Path(archive.config.store_url("inbox").removeprefix("file://"))
    assert list((root / ".tmp").iterdir()) == []


def test_stopping_early_discards_the_batch_being_staged(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that stops reading after the first outcome (the generator closed)
    leaves batch 1 recorded and removes the temp files of batch 2, staged meanwhile."""
    monkeypatch.setattr(ingest, "BATCH_SIZE", 4)
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(10):
        (tree / f"f{i}").write_bytes(f"file {i}".encode())
    stream = ingest.put_files(archive, scan([tree]))
    assert next(stream).stored
    stream.close()
    assert _count(archive, Copy) == 4
    root = Path(archive.config.store_url("inbox").removeprefix("file://"))
    assert list((root / ".tmp").iterdir()) == []


def test_missing_and_unreadable_paths_record_nothing(archive: Archive, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_bytes(b"fine")
    with pytest.raises(BadInput, match="no such file"):
        scan([good, tmp_path / "absent"])
    if os.geteuid() != 0:  # root reads anything; the CLI test covers the message
        locked = tmp_path / "locked.txt"
        locked.write_bytes(b"secret")
        locked.chmod(0)
        with pytest.raises(BadInput, match="permission denied"):
            scan([good, locked])
    assert _count(archive, Blob) == 0


def test_read_failure_mid_batch_rolls_back_the_batch(archive: Archive, tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(5):
        (tree / f"f{i}").write_bytes(f"{i}".encode())
    files = scan([tree])
    (tree / "f3").unlink()  # vanishes between the scan and the read
    with pytest.raises(BadInput, match="cannot read"):
        list(ingest.put_files(archive, files))
    assert _count(archive, Blob) == 0
    assert _objects(archive) == []


def test_orphan_object_is_adopted_by_the_next_put(archive: Archive) -> None:
    data = b"written, then the process died before commit"
    sha256 = hashlib.sha256(data).hexdigest()
    archive.store("inbox").put(sha256, [data])  # the crash window: object, no row
    outcome = archive.put_bytes(data)
    # adopted: new to the catalog, so reported as stored, not as "already held"
    assert outcome.sha256 == sha256 and outcome.stored
    assert [c.state for c in inventory.stat_blob(archive, sha256).copies] == ["present"]


def test_put_to_another_location(archive: Archive) -> None:
    result = ingest.put_stream(archive, [b"straight to the archive"], location="archive")
    assert [c.location for c in inventory.stat_blob(archive, result.sha256).copies] == ["archive"]
    with pytest.raises(NotFound, match="no location named 'attic'"):
        ingest.put_stream(archive, [b"x"], location="attic")


def test_blob_prefix_resolution(archive: Archive) -> None:
    outcome = archive.put_bytes(b"prefix me")
    assert inventory.resolve_blob(archive, outcome.sha256[:8]) == outcome.sha256
    with pytest.raises(NotFound):
        inventory.resolve_blob(archive, "000000")
    with pytest.raises(BadInput):
        inventory.resolve_blob(archive, "abc")


def test_stale_temp_files_of_crashed_writers_are_cleaned_on_open(
    make_archive: ArchiveFactory,
) -> None:
    first = make_archive()
    first.put_bytes(b"open the store once")
    tmp_dir = Path(first.config.store_url("inbox").removeprefix("file://")) / ".tmp"
    stale, young = tmp_dir / "crashed-long-ago", tmp_dir / "someone-writing-now"
    stale.write_bytes(b"partial")
    young.write_bytes(b"partial")
    long_ago = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (long_ago, long_ago))
    make_archive().store("inbox")
    assert not stale.exists()
    assert young.exists()

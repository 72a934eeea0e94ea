"""FileStore specifics the conformance suite cannot see: paths on disk, temp files, URLs."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    NotFound,
    PermanentStoreError,
    SafekeeperError,
    TransientStoreError,
)
from safekeeper.stores import base, open_store
from safekeeper.stores.base import KERNEL_COPY_MIN
from safekeeper.stores.filesystem import TMP_DIR, FileStore, os_error
from safekeeper.stores.marker import MARKER_NAME
from safekeeper.stores.memory import MemoryStore

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def _store(root: Path, **options: object) -> FileStore:
    store = FileStore.from_url(root.as_uri(), **options)  # type: ignore[arg-type]
    assert isinstance(store, FileStore)
    return store


@pytest.mark.parametrize(
    ("options", "key", "relpath"),
    [
        ({}, SHA, f"9f/86/{SHA}"),
        ({"layout": "flat"}, "obj-1", "obj-1"),
        ({"layout": "interval"}, "1234567", "1/234/1234567"),
        ({"layout": "interval", "interval_size": 10}, "12345", "123/4/12345"),
        ({"layout": "interval"}, str(10**40), f"{10**34}/0/{10**40}"),
    ],
)
def test_objects_land_where_the_layout_says(
    tmp_path: Path, options: dict[str, object], key: str, relpath: str
) -> None:
    store = _store(tmp_path, **options)
    store.put(key, [b"payload"])
    path = tmp_path / relpath
    assert path.read_bytes() == b"payload"
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0  # published read-only
    assert [info.key for info in store.list()] == [key]


def test_only_initialize_creates_the_root(tmp_path: Path) -> None:
    """Opening or writing to a store whose root is missing (a disk not mounted) must
    fail and create nothing; ``initialize`` makes the root, its temp dir and marker."""
    root = tmp_path / "a" / "b"
    store = _store(root)
    assert store.url == root.as_uri()
    assert not root.exists() and store.read_marker() is None
    with pytest.raises(PermanentStoreError, match="does not exist"):
        store.put(SHA, [b"payload"])
    with pytest.raises(PermanentStoreError, match="does not exist"):
        store.stage([b"payload"])
    assert not root.exists()
    assert store.clean_temp(0) == 0
    store.initialize(b'{"format": 1}')
    assert (root / TMP_DIR).is_dir()
    assert (root / MARKER_NAME).read_bytes() == b'{"format": 1}'
    store.put(SHA, [b"payload"])
    assert [info.key for info in store.list()] == [SHA]


def test_temp_dir_removed_by_hand_comes_back_inside_the_root(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.initialize(b"{}")
    os.rmdir(tmp_path / TMP_DIR)
    store.put(SHA, [b"payload"])
    assert (tmp_path / TMP_DIR).is_dir()


@pytest.mark.parametrize("form", ["file:{path}", "file://{path}", "file://localhost{path}"])
def test_url_forms(tmp_path: Path, form: str) -> None:
    store = open_store(form.format(path=tmp_path / "s"))
    assert isinstance(store, FileStore)
    assert store.root == tmp_path / "s"


def test_percent_encoded_url(tmp_path: Path) -> None:
    store = open_store((tmp_path / "with space").as_uri())
    assert isinstance(store, FileStore)
    assert store.root == tmp_path / "with space"


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("file:relative/dir", {}),
        ("file://otherhost/abs", {}),
        ("file:///abs", {"layout": "nested"}),
        ("file:///abs", {"layout": "interval", "interval_size": 1}),
        ("file:///abs", {"colour": "blue"}),
    ],
)
def test_bad_urls_and_options(url: str, options: dict[str, object]) -> None:
    with pytest.raises(BadInput):
        open_store(url, options)


def test_from_url_opens_and_open_reads(tmp_path: Path) -> None:
    store = FileStore.from_url(tmp_path.as_uri(), layout="flat")
    store.put("k1", [b"abc"])
    assert b"".join(store.open("k1")) == b"abc"
    memory = MemoryStore.from_url("memory://open-method")
    memory.put("k1", [b"xyz"])
    assert b"".join(memory.open("k1")) == b"xyz"


def test_leftover_temp_files_are_invisible_and_cleaned(tmp_path: Path) -> None:
    store = _store(tmp_path, layout="flat")
    store.put("real", [b"1234"])
    old = tmp_path / TMP_DIR / "crashed.tmp"
    old.write_bytes(b"partial write from a crash")
    fresh = tmp_path / TMP_DIR / "in-flight.tmp"
    fresh.write_bytes(b"someone is writing this")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))

    assert [info.key for info in store.list()] == ["real"]
    assert (store.usage().used_bytes, store.usage().object_count) == (4, 1)
    assert store.clean_temp(older_than_seconds=600) == 1
    assert not old.exists() and fresh.exists()
    assert store.clean_temp(older_than_seconds=0) == 1
    assert os.listdir(tmp_path / TMP_DIR) == []


def test_stray_files_are_not_objects(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put(SHA, [b"x"])
    (tmp_path / "README").write_text("notes")
    (tmp_path / "9f" / "86" / "0000aaaa").write_text("misplaced")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "abcdef").write_text("hidden")
    (tmp_path / "9f" / "86" / "link").symlink_to(tmp_path / "README")
    assert [info.key for info in store.list()] == [SHA]
    assert store.usage().object_count == 1


def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    store = _store(tmp_path)

    def failing() -> Iterator[bytes]:
        yield b"some"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        store.put(SHA, failing())
    store.put(SHA, [b"ok"])
    with pytest.raises(AlreadyExists):
        store.put(SHA, [b"again"])
    staged = store.stage([b"staged"])
    assert len(os.listdir(tmp_path / TMP_DIR)) == 1
    staged.discard()
    with store.stage([b"staged"]) as staged, pytest.raises(AlreadyExists):
        staged.commit(SHA)
    assert os.listdir(tmp_path / TMP_DIR) == []


def test_existing_key_fails_before_reading_the_source(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put(SHA, [b"ok"])
    consumed = []

    def source() -> Iterator[bytes]:
        consumed.append(True)
        yield b"never needed"

    with pytest.raises(AlreadyExists):
        store.put(SHA, source())
    assert consumed == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_abandoned_stream_closes_its_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put(SHA, [b"x" * (3 * 1024 * 1024)])
    before = len(os.listdir("/proc/self/fd"))
    stream = store.open(SHA)
    next(stream)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    stream.close()  # type: ignore[attr-defined]
    assert len(os.listdir("/proc/self/fd")) == before


def test_missing_object_directory_is_not_found(tmp_path: Path) -> None:
    store = _store(tmp_path, layout="interval")
    with pytest.raises(NotFound):
        store.stat("123456789")
    store.delete(["123456789"])
    assert list(store.list("9")) == []


def test_usage_reports_disk_capacity(tmp_path: Path) -> None:
    usage = _store(tmp_path).usage()
    assert usage.capacity_bytes and usage.capacity_bytes > 0
    assert usage.free_bytes is not None and 0 <= usage.free_bytes <= usage.capacity_bytes


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (errno.ENOENT, NotFound),
        (errno.EEXIST, AlreadyExists),
        (errno.ENOSPC, PermanentStoreError),
        (errno.EACCES, PermanentStoreError),
        (errno.EROFS, PermanentStoreError),
        (errno.EIO, TransientStoreError),
        (errno.EAGAIN, TransientStoreError),
        (errno.EINTR, TransientStoreError),
    ],
)
def test_os_errors_map_to_store_errors(code: int, error: type[Exception]) -> None:
    mapped = os_error(OSError(code, os.strerror(code)), "doing things")
    assert type(mapped) is error
    assert "doing things" in str(mapped)


@pytest.mark.parametrize("start", [0, 50])
def test_large_put_starts_at_the_file_objects_position(tmp_path: Path, start: int) -> None:
    """The kernel copy for big files must start where the file object is, not where its
    descriptor is: after a read and a seek back inside Python's buffer they differ
    (a package put once lost its first 4 KiB this way)."""
    data = os.urandom(KERNEL_COPY_MIN + 12345)
    source_path = tmp_path / "big.bin"
    source_path.write_bytes(data)
    store = open_store((tmp_path / "store").as_uri())
    store.initialize(b"{}")
    with source_path.open("rb") as source:
        source.read(100)  # fills the buffer: the descriptor is now ahead of the object
        source.seek(start)
        assert os.lseek(source.fileno(), 0, os.SEEK_CUR) != start
        result = store.put("abcd1234", source)
        assert source.tell() == len(data)  # consumed, as a read loop would leave it
    expected = data[start:]
    assert result.size == len(expected)
    assert result.sha256 == hashlib.sha256(expected).hexdigest()
    assert store.read_range("abcd1234", 0, 64) == expected[:64]


def test_prepare_makes_the_directories_and_no_object(tmp_path: Path) -> None:
    """``prepare`` (run by ingest's staging threads) creates the object's directories
    only: nothing is listed, the key is still free, and a publish afterwards works."""
    store = _store(tmp_path)
    store.prepare(SHA)
    assert (tmp_path / "9f" / "86").is_dir()
    assert list(store.list()) == []
    assert not store.exists(SHA)
    store.prepare(SHA)  # again: nothing to do, no error
    with store.stage([b"test"]) as staged:
        staged.commit(SHA)
    assert (tmp_path / "9f" / "86" / SHA).read_bytes() == b"test"


def test_kernel_copy_starts_writeback_of_each_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big put hands every copied range to the kernel's writeback at once, so the
    sync that follows waits for little (the bytes and hash are unchanged)."""
    real = base._start_writeback
    if real is None:
        pytest.skip("no sync_file_range in this libc")
    calls: list[tuple[int, int]] = []

    def spy(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(base, "_start_writeback", spy)
    source = tmp_path / "big.bin"
    data = os.urandom(KERNEL_COPY_MIN + 12345)
    source.write_bytes(data)
    (tmp_path / "store").mkdir()
    store = _store(tmp_path / "store")
    key = hashlib.sha256(data).hexdigest()
    with source.open("rb") as f:
        result = store.put(key, f)
    assert result.sha256 == key
    assert store.read_range(key, 0, len(data) + 1) == data
    assert sum(length for _, length in calls) == len(data)
    assert calls[0][0] == 0


def _many(store: FileStore, count: int) -> list[str]:
    keys = [f"obj-{i}" for i in range(count)]
    with store.deferred_sync():
        for key in keys:
            store.put(key, [key.encode()])
    store.sync()
    return keys


def test_a_bulk_delete_in_threads_removes_every_object_and_ignores_missing_keys(
    tmp_path: Path,
) -> None:
    """Past one chunk of keys the unlinks run in threads: every key still goes, and
    keys already gone are no error."""
    store = _store(tmp_path, layout="flat")
    keys = _many(store, 700)
    store.delete([*keys, "never-there-1", "never-there-2"])
    assert list(store.list()) == []


def test_a_bulk_delete_that_fails_reports_it_after_every_other_unlink_ran(
    tmp_path: Path,
) -> None:
    """One key that cannot be unlinked (a directory stands at its path) fails the
    call, but only once every other chunk has run: gc then asks which objects are
    gone, and must find each of them gone."""
    store = _store(tmp_path, layout="flat")
    keys = _many(store, 700)
    (tmp_path / "obj-blocked").mkdir()
    (tmp_path / "obj-blocked" / "inside").write_bytes(b"x")
    with pytest.raises(SafekeeperError, match="cannot delete 'obj-blocked'"):
        store.delete(["obj-blocked", *keys])
    assert not any(store.exists(key) for key in keys)
    assert (tmp_path / "obj-blocked").is_dir()


class _Pieces:
    """A file-like source read in small pieces (as a bundle member is), failing after
    ``fail_after`` pieces when given."""

    def __init__(self, data: bytes, piece: int, fail_after: int | None = None) -> None:
        self._data, self._piece, self._fail_after, self._reads = data, piece, fail_after, 0

    def read(self, size: int = -1) -> bytes:
        if self._fail_after is not None and self._reads == self._fail_after:
            raise OSError(errno.EIO, "source went away")
        self._reads += 1
        piece, self._data = self._data[: self._piece], self._data[self._piece :]
        return piece


def _helpers() -> set[int]:
    import threading

    return {t.ident or 0 for t in threading.enumerate() if t.name.startswith("safekeeper-sha256")}


def test_shared_hasher_hashes_many_objects_on_one_helper(tmp_path: Path) -> None:
    """Inside ``shared_hasher`` every multi-piece write is hashed on the same helper
    thread (not one started per object), a failed write leaves it usable, and it is
    gone after the block."""
    before = _helpers()
    seen: set[int] = set()
    with base.shared_hasher():
        for i in range(20):
            data = os.urandom(3 * 1024 + i)
            with (tmp_path / f"o{i}").open("wb") as out:
                size, sha256 = base.write_hashed(_Pieces(data, 1024), out.fileno())
            assert (size, sha256) == (len(data), hashlib.sha256(data).hexdigest())
            assert (tmp_path / f"o{i}").read_bytes() == data
            seen |= _helpers() - before
        with (tmp_path / "broken").open("wb") as out, pytest.raises(OSError, match="went away"):
            base.write_hashed(_Pieces(os.urandom(4096), 1024, fail_after=3), out.fileno())
        data = os.urandom(5000)
        with (tmp_path / "after").open("wb") as out:
            assert base.write_hashed(_Pieces(data, 1024), out.fileno())[1] == (
                hashlib.sha256(data).hexdigest()
            )
        seen |= _helpers() - before
    assert len(seen) == 1
    assert _helpers() - before == set()

"""The conformance suite every Store backend must pass (see ``stores.base``).

It checks the promises the rest of safekeeper builds on: create-only atomic puts,
exact size and SHA-256, NotFound for missing keys, idempotent deletes, streaming
listings. A backend's tests subclass it and say how to make a fresh, empty store::

    from safekeeper.testing import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self) -> Store:
            return MyStore.from_url("my://fresh-empty-place")

(or override the ``store`` fixture instead, to use other fixtures such as
``tmp_path``). Before each test the suite calls ``store.initialize(marker)``, as
safekeeper does when it registers a location, so the store may be one whose root
does not exist yet. Keys come from ``make_key(i)``, by default the SHA-256 hex of
``str(i)``; a backend that only takes integer keys returns ``str(i)``. Override
``bad_keys()`` if the backend's key policy differs from safekeeper's.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safekeeper.errors import AlreadyExists, BadInput, NotFound, TransientStoreError
from safekeeper.stores.base import Staged, Store
from safekeeper.stores.marker import MARKER_NAME, StoreMarker

MIB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating bytes (so a misplaced chunk changes the hash)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class StoreConformance:
    """Subclass as ``Test<Backend>`` and provide ``make_store`` or a ``store`` fixture."""

    #: Objects for the listing test; above 1000 so S3 listings need several pages.
    list_many_count = 1200
    #: Size of the multi-chunk object: past 5 MiB so it spans chunks and S3 parts.
    big_size = 5 * MIB + 12345
    #: Threads racing to create one key.
    race_writers = 8
    #: The identity marker every test's store is initialised with.
    marker = StoreMarker(uuid="00000000-0000-4000-8000-00000000c0de", location="suite").encode()
    #: Whether ``stat`` gives a fingerprint. A backend without one is still usable: gc
    #: then re-hashes every copy it relies on before a delete.
    has_fingerprints = True

    def make_store(self) -> Store:
        raise NotImplementedError("override make_store() or the store fixture")

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        store = self.make_store()
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture(autouse=True)
    def marker_before_initialize(self, store: Store) -> bytes | None:
        """Initialise the fresh store with ``marker``, as registering a location does;
        the value is the marker it had before (a fresh store has none)."""
        before = store.read_marker()
        store.initialize(self.marker)
        return before

    def make_key(self, i: int) -> str:
        return _sha(str(i).encode())

    def bad_keys(self) -> list[str]:
        return ["", "a/b", "../x", "..", ".hidden", "nul\x00byte", "x" * 300, "has space"]

    def _put(self, store: Store, key: str, data: bytes) -> None:
        result = store.put(key, [data])
        assert (result.size, result.sha256) == (len(data), _sha(data))

    def _read(self, store: Store, key: str) -> bytes:
        return b"".join(store.open(key))

    # -- put and open ---------------------------------------------------------

    def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert isinstance(store.url, str) and store.url

    @pytest.mark.parametrize("size", [0, 1, 1000])
    def test_put_open_roundtrip_small(self, store: Store, size: int) -> None:
        data = _payload(size)
        key = self.make_key(size)
        self._put(store, key, data)
        assert self._read(store, key) == data

    def test_put_open_roundtrip_multi_chunk(self, store: Store) -> None:
        data = _payload(self.big_size, seed=1)
        key = self.make_key(1)
        result = store.put(key, io.BytesIO(data))
        assert (result.size, result.sha256) == (len(data), _sha(data))
        chunks = list(store.open(key))
        assert all(isinstance(chunk, bytes) for chunk in chunks)
        assert b"".join(chunks) == data

    def test_put_from_iterable_of_odd_chunks(self, store: Store) -> None:
        data = _payload(300_001, seed=2)
        pieces = [b"", *_chunks(data, 7777), b""]
        result = store.put(self.make_key(2), iter(pieces))
        assert (result.size, result.sha256) == (len(data), _sha(data))
        assert self._read(store, self.make_key(2)) == data

    def test_put_from_real_file(self, store: Store, tmp_path: Path) -> None:
        data = _payload(2 * MIB + 3, seed=3)
        path = tmp_path / "source.bin"
        path.write_bytes(data)
        with path.open("rb") as f:
            result = store.put(self.make_key(3), f)
        assert (result.size, result.sha256) == (len(data), _sha(data))
        assert self._read(store, self.make_key(3)) == data

    def test_put_is_create_only(self, store: Store) -> None:
        key = self.make_key(4)
        self._put(store, key, b"original")
        with pytest.raises(AlreadyExists):
            store.put(key, [b"replacement"])
        assert self._read(store, key) == b"original"

    def test_failed_source_leaves_no_object(self, store: Store) -> None:
        def failing() -> Iterator[bytes]:
            yield _payload(100_000)
            raise RuntimeError("source broke")

        with pytest.raises(Exception, match="source broke"):
            store.put(self.make_key(5), failing())
        assert not store.exists(self.make_key(5))
        assert list(store.list()) == []

    def test_open_can_be_abandoned(self, store: Store) -> None:
        key = self.make_key(6)
        self._put(store, key, _payload(3 * MIB))
        stream = store.open(key)
        assert next(iter(stream))
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        store.delete([key])  # nothing holds the object any more
        assert not store.exists(key)

    # -- stage and commit -----------------------------------------------------

    def test_stage_then_commit(self, store: Store) -> None:
        data = _payload(1 * MIB + 1, seed=7)
        staged = store.stage(_chunks(data, 65536))
        assert isinstance(staged, Staged)
        assert (staged.size, staged.sha256) == (len(data), _sha(data))
        assert list(store.list()) == []
        staged.commit(staged_key := self.make_key(7))
        staged.discard()  # safe after commit
        assert self._read(store, staged_key) == data

    def test_stage_discard_leaves_nothing(self, store: Store) -> None:
        staged = store.stage([b"never published"])
        staged.discard()
        staged.discard()
        with store.stage([b"context managed"]) as ctx:
            assert ctx.size == len(b"context managed")
        assert list(store.list()) == []
        assert store.usage().object_count == 0

    def test_stage_commit_to_existing_key(self, store: Store) -> None:
        key = self.make_key(8)
        self._put(store, key, b"first")
        with store.stage([b"second"]) as staged, pytest.raises(AlreadyExists):
            staged.commit(key)
        assert self._read(store, key) == b"first"

    # -- replace (good bytes over a wrong object) -----------------------------

    def test_replace_overwrites_and_reports_what_it_wrote(self, store: Store) -> None:
        key = self.make_key(20)
        self._put(store, key, b"wrong bytes")
        result = store.replace(key, [b"right bytes!"])
        assert (result.size, result.sha256) == (12, _sha(b"right bytes!"))
        assert self._read(store, key) == b"right bytes!"
        assert [info.key for info in store.list()] == [key]

    def test_replace_of_an_absent_key_creates_it(self, store: Store) -> None:
        key = self.make_key(21)
        store.replace(key, [b"fresh"])
        assert self._read(store, key) == b"fresh"

    def test_staged_replace(self, store: Store) -> None:
        key = self.make_key(22)
        self._put(store, key, b"same size A")
        with store.stage([b"same size B"]) as staged:
            staged.replace(key)
            staged.discard()  # safe after replace
        assert self._read(store, key) == b"same size B"
        assert store.usage().object_count == 1

    def test_reader_sees_old_or_new_during_replace(self, store: Store) -> None:
        key = self.make_key(23)
        old, new = _payload(300_000, seed=1), _payload(300_000, seed=2)
        self._put(store, key, old)
        seen: list[bytes] = []
        errors: list[Exception] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    seen.append(self._read(store, key))
                except NotFound as exc:  # a gap: the key was briefly absent
                    errors.append(exc)
                except TransientStoreError:
                    pass  # a read pinned to the old version noticed the swap (S3 ETag)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for data in (new, old, new):
                store.replace(key, [data])
        finally:
            stop.set()
            thread.join()
        assert errors == []
        assert seen and all(data in (old, new) for data in seen)
        assert self._read(store, key) == new

    # -- reading ---------------------------------------------------------------

    def test_missing_key_not_found(self, store: Store) -> None:
        key = self.make_key(9)
        with pytest.raises(NotFound):
            b"".join(store.open(key))
        with pytest.raises(NotFound):
            store.read_range(key, 0, 10)
        with pytest.raises(NotFound):
            store.read_range(key, 0, 0)
        with pytest.raises(NotFound):
            store.stat(key)
        assert store.exists(key) is False

    def test_read_range(self, store: Store) -> None:
        data = _payload(1000, seed=10)
        key = self.make_key(10)
        self._put(store, key, data)
        assert store.read_range(key, 100, 50) == data[100:150]
        assert store.read_range(key, 0, 1000) == data
        assert store.read_range(key, 990, 100) == data[990:]
        assert store.read_range(key, 1000, 10) == b""
        assert store.read_range(key, 5000, 10) == b""
        assert store.read_range(key, 10, 0) == b""
        with pytest.raises(BadInput):
            store.read_range(key, -1, 10)

    def test_stat_and_exists(self, store: Store) -> None:
        key = self.make_key(11)
        before = datetime.now(UTC) - timedelta(minutes=5)
        self._put(store, key, b"x" * 123)
        info = store.stat(key)
        assert (info.key, info.size) == (key, 123)
        if info.modified is not None:
            assert info.modified.tzinfo is not None
            assert before <= info.modified <= datetime.now(UTC) + timedelta(minutes=5)
        assert store.exists(key) is True

    def test_fingerprint_changes_when_the_object_is_replaced(self, store: Store) -> None:
        """Stable while the object stands; different once other bytes of the same size
        are at the key (gc's re-confirmation relies on it)."""
        if not self.has_fingerprints:
            pytest.skip("backend gives no fingerprint")
        key = self.make_key(31)
        self._put(store, key, b"a" * 64)
        first = store.stat(key).fingerprint
        assert isinstance(first, str) and first
        assert store.stat(key).fingerprint == first
        time.sleep(0.05)  # past the coarse clock tick of file timestamps
        store.delete([key])
        self._put(store, key, b"b" * 64)
        assert store.stat(key).fingerprint not in (None, first)

    # -- delete ------------------------------------------------------------------

    def test_delete_is_idempotent(self, store: Store) -> None:
        key = self.make_key(12)
        self._put(store, key, b"bye")
        store.delete([key])
        store.delete([key])
        store.delete([])
        assert not store.exists(key)
        with pytest.raises(NotFound):
            store.stat(key)

    def test_delete_many_mixed_with_missing(self, store: Store) -> None:
        keys = [self.make_key(i) for i in range(100, 160)]
        present = keys[::2]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: self._put(store, k, k.encode()), present))
        store.delete(iter(keys))  # any iterable, including a generator
        assert list(store.list()) == []

    # -- listing and usage -------------------------------------------------------

    def test_list_all_and_by_prefix(self, store: Store) -> None:
        keys = {self.make_key(i): i for i in range(200, 240)}
        for key, i in keys.items():
            self._put(store, key, b"z" * i)
        listed = {info.key: info.size for info in store.list()}
        assert listed == {key: i for key, i in keys.items()}
        for prefix in {key[:n] for key in keys for n in (1, 2, 3)} | {next(iter(keys))}:
            expected = {key for key in keys if key.startswith(prefix)}
            assert {info.key for info in store.list(prefix)} == expected, prefix
        assert list(store.list("zzzz")) == []

    def test_list_streams_many(self, store: Store) -> None:
        keys = {self.make_key(i) for i in range(1000, 1000 + self.list_many_count)}
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: self._put(store, k, b"m"), keys))
        listing = store.list()
        assert not isinstance(listing, list | tuple)  # a stream, not a materialised list
        assert {info.key for info in listing} == keys

    def test_bad_prefix(self, store: Store) -> None:
        with pytest.raises(BadInput):
            list(store.list("../"))

    def test_usage(self, store: Store) -> None:
        assert (store.usage().used_bytes, store.usage().object_count) == (0, 0)
        self._put(store, self.make_key(13), b"a" * 10)
        self._put(store, self.make_key(14), b"b" * 32)
        with store.stage([b"not counted"]):
            usage = store.usage()
        assert (usage.used_bytes, usage.object_count) == (42, 2)

    # -- concurrency -------------------------------------------------------------

    def test_concurrent_puts_one_winner(self, store: Store) -> None:
        key = self.make_key(15)
        payloads = [_payload(256 * 1024, seed=100 + n) for n in range(self.race_writers)]
        barrier = threading.Barrier(self.race_writers)

        def write(n: int) -> str:
            barrier.wait()
            try:
                store.put(key, _chunks(payloads[n], 32 * 1024))
            except AlreadyExists:
                return "lost"
            return "won"

        with ThreadPoolExecutor(self.race_writers) as pool:
            outcomes = list(pool.map(write, range(self.race_writers)))
        assert outcomes.count("won") == 1, outcomes
        assert self._read(store, key) == payloads[outcomes.index("won")]

    def test_reader_never_sees_partial_object(self, store: Store) -> None:
        key = self.make_key(16)
        data = _payload(512 * 1024, seed=16)
        done = threading.Event()

        def slow_source() -> Iterator[bytes]:
            for chunk in _chunks(data, 32 * 1024):
                time.sleep(0.01)
                yield chunk

        def writer() -> None:
            try:
                store.put(key, slow_source())
            finally:
                done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        seen = []
        while not done.is_set():
            try:
                seen.append(self._read(store, key))
            except NotFound:
                seen.append(b"")
        thread.join()
        assert all(got in (b"", data) for got in seen)
        assert self._read(store, key) == data

    # -- identity marker -----------------------------------------------------------

    def test_fresh_store_has_no_marker(self, marker_before_initialize: bytes | None) -> None:
        assert marker_before_initialize is None

    def test_marker_roundtrip(self, store: Store) -> None:
        assert store.read_marker() == self.marker
        assert StoreMarker.parse(self.marker, "suite").uuid.endswith("c0de")

    def test_initialize_is_create_only(self, store: Store) -> None:
        other = StoreMarker(uuid="00000000-0000-4000-8000-0000000000ff").encode()
        with pytest.raises(AlreadyExists):
            store.initialize(other)
        assert store.read_marker() == self.marker

    def test_marker_is_not_an_object(self, store: Store) -> None:
        assert list(store.list()) == []
        assert (store.usage().used_bytes, store.usage().object_count) == (0, 0)
        self._put(store, self.make_key(21), b"object")
        assert [info.key for info in store.list()] == [self.make_key(21)]
        store.delete([info.key for info in store.list()])
        assert store.read_marker() == self.marker  # emptying a store keeps who it is
        for call in (store.exists, store.stat, store.open):
            with pytest.raises(BadInput):
                call(MARKER_NAME)
        with pytest.raises(BadInput):
            store.delete([MARKER_NAME])
        with pytest.raises(BadInput):
            store.put(MARKER_NAME, [b"{}"])

    # -- key policy ----------------------------------------------------------------

    def test_bad_keys_rejected(self, store: Store) -> None:
        for key in self.bad_keys():
            with pytest.raises(BadInput):
                store.put(key, [b"data"])
            with pytest.raises(BadInput):
                store.stat(key)
            with pytest.raises(BadInput):
                store.exists(key)
            with pytest.raises(BadInput):
                store.delete([key])
            with store.stage([b"data"]) as staged, pytest.raises(BadInput):
                staged.commit(key)
        assert list(store.list()) == []

    def test_many_keys_roundtrip(self, store: Store) -> None:
        keys = [self.make_key(i) for i in (0, 1, 7, 999, 1000, 123456, 10**12)]
        for key in keys:
            self._put(store, key, key.encode())
        for key in keys:
            assert self._read(store, key) == key.encode()
        assert {info.key for info in store.list()} == set(keys)


__all__ = ["StoreConformance"]

"""An in-process store for tests and dry runs: ``memory://NAME``.

Stores opened with the same NAME in one process share their objects (a module-level
registry), so a test can open the "same" store twice the way two services would.
Every operation holds the bucket's lock only briefly; objects are immutable ``bytes``,
so readers stream a snapshot and never see a partial object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from safekeeper.errors import AlreadyExists, BadInput, NotFound
from safekeeper.stores.base import (
    CHUNK_SIZE,
    HashingCounter,
    ObjectInfo,
    PutResult,
    Source,
    Staged,
    Usage,
    iter_source,
)
from safekeeper.stores.layouts import validate_key, validate_prefix


@dataclass
class _Bucket:
    lock: threading.Lock = field(default_factory=threading.Lock)
    objects: dict[str, tuple[bytes, datetime]] = field(default_factory=dict)
    #: The identity marker: kept apart from the objects, so no listing shows it.
    marker: bytes | None = None


_registry: dict[str, _Bucket] = {}
_registry_lock = threading.Lock()


def _bucket(name: str) -> _Bucket:
    with _registry_lock:
        return _registry.setdefault(name, _Bucket())


def _read_all(source: Source) -> tuple[bytes, HashingCounter]:
    counter = HashingCounter()
    chunks = []
    for chunk in iter_source(source):
        counter.update(chunk)
        chunks.append(chunk)
    return b"".join(chunks), counter


class MemoryStaged:
    """Bytes held aside by ``MemoryStore.stage`` until ``commit``."""

    def __init__(self, store: MemoryStore, data: bytes, counter: HashingCounter) -> None:
        self._store = store
        self._data: bytes | None = data
        self.size = counter.size
        self.sha256 = counter.sha256

    def commit(self, key: str) -> None:
        if self._data is None:
            raise BadInput("staged object was already committed or discarded")
        self._store._publish(key, self._data)
        self._data = None

    def replace(self, key: str) -> None:
        if self._data is None:
            raise BadInput("staged object was already committed or discarded")
        self._store._publish(key, self._data, overwrite=True)
        self._data = None

    def discard(self) -> None:
        self._data = None

    def __enter__(self) -> MemoryStaged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class MemoryStore:
    """Objects in a dict shared by every store opened with the same name."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self._bucket = _bucket(name)

    @classmethod
    def from_url(cls, /, url: str, **options: object) -> MemoryStore:
        if options:
            raise BadInput(f"memory store takes no options, got: {', '.join(sorted(options))}")
        parts = urlsplit(url)
        if parts.scheme.lower() != "memory":
            raise BadInput(f"not a memory:// URL: {url!r}")
        name = (parts.netloc + parts.path).strip("/")
        if not name:
            raise BadInput(f"memory store URL needs a name, like memory://test: {url!r}")
        return cls(name, f"memory://{name}")

    @staticmethod
    def reset(name: str | None = None) -> None:
        """Forget the objects of store ``name`` (or of every memory store)."""
        with _registry_lock:
            if name is None:
                _registry.clear()
            else:
                _registry.pop(name, None)

    def _publish(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        validate_key(key)
        with self._bucket.lock:
            if key in self._bucket.objects and not overwrite:
                raise AlreadyExists(f"{self.url}: object {key!r} already exists")
            self._bucket.objects[key] = (data, datetime.now(UTC))

    def _get(self, key: str) -> tuple[bytes, datetime]:
        validate_key(key)
        with self._bucket.lock:
            found = self._bucket.objects.get(key)
        if found is None:
            raise NotFound(f"{self.url}: no object {key!r}")
        return found

    def put(self, key: str, source: Source) -> PutResult:
        validate_key(key)  # fail before reading the source
        data, counter = _read_all(source)
        self._publish(key, data)
        return PutResult(size=counter.size, sha256=counter.sha256)

    def replace(self, key: str, source: Source) -> PutResult:
        validate_key(key)
        data, counter = _read_all(source)
        self._publish(key, data, overwrite=True)
        return PutResult(size=counter.size, sha256=counter.sha256)

    def stage(self, source: Source) -> Staged:
        data, counter = _read_all(source)
        return MemoryStaged(self, data, counter)

    def open(self, key: str) -> Iterator[bytes]:
        data, _ = self._get(key)  # raise NotFound now, not on the first next()
        return (data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise BadInput(f"bad range: start={start} length={length}")
        data, _ = self._get(key)
        return data[start : start + length]

    def stat(self, key: str) -> ObjectInfo:
        data, modified = self._get(key)
        # Objects are immutable bytes: replacing one puts another bytes object in the
        # dict while the old one is still referenced, so its id differs.
        fingerprint = f"memory:{len(data)}:{id(data)}:{modified.timestamp()!r}"
        return ObjectInfo(key=key, size=len(data), modified=modified, fingerprint=fingerprint)

    def exists(self, key: str) -> bool:
        validate_key(key)
        with self._bucket.lock:
            return key in self._bucket.objects

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            validate_key(key)
            with self._bucket.lock:
                self._bucket.objects.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        with self._bucket.lock:
            snapshot = [
                ObjectInfo(key=key, size=len(data), modified=modified)
                for key, (data, modified) in self._bucket.objects.items()
                if key.startswith(prefix)
            ]
        return iter(snapshot)

    def usage(self) -> Usage:
        with self._bucket.lock:
            sizes = [len(data) for data, _ in self._bucket.objects.values()]
        return Usage(used_bytes=sum(sizes), object_count=len(sizes))

    def read_marker(self) -> bytes | None:
        with self._bucket.lock:
            return self._bucket.marker

    def initialize(self, marker: bytes) -> None:
        with self._bucket.lock:
            if self._bucket.marker is not None:
                raise AlreadyExists(f"{self.url}: the store already has a marker")
            self._bucket.marker = bytes(marker)

    def close(self) -> None:
        """Nothing to release: the objects outlive the handle, by design."""

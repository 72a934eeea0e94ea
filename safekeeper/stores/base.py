"""The one protocol every store backend implements.

A store holds immutable objects by key. It knows nothing about blobs, copies or the
database: the services layer decides what a key means. Every backend must pass the
conformance suite in ``safekeeper.testing``.

Rules every backend keeps (the suite checks them):

- ``put`` and ``Staged.commit`` are create-only: an existing key raises AlreadyExists
  and the existing object is untouched. A reader never sees a partial object: it sees
  the whole object or NotFound.
- ``replace`` and ``Staged.replace`` write whether or not the key is taken, atomically:
  a reader sees the old object or the whole new one, never a gap. Services use them
  only to put hashed good bytes over an object they hashed and found wrong
  (invariant 11, see ``services.copies.existing``); every other write is create-only.
- ``put`` returns the size and SHA-256 of exactly the bytes that were stored,
  computed in the same pass as the write.
- ``delete`` is idempotent: missing keys are not an error.
- Missing keys raise NotFound from ``open``, ``read_range`` and ``stat``.
- Failures raise TransientStoreError (worth a retry) or PermanentStoreError.
- Identity (see ``stores.marker``): ``initialize`` creates the store — its root, for
  a backend that has one — and writes the identity marker, create-only;
  ``read_marker`` returns it, or None when the store has none (or no root). Opening a
  store creates nothing: a filesystem store whose root is missing fails its writes
  instead of making a new, empty root (a disk that is not mounted must stay visible).
  The marker never appears in ``list`` or ``usage`` and no key can name it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import io
import os
import stat as stat_module
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import (
    Any,
    BinaryIO,
    Protocol,
    runtime_checkable,
)

from safekeeper.errors import BadInput, SafekeeperError

CHUNK_SIZE = 1024 * 1024
#: Bytes per read/write syscall when copying a source to a local file.
WRITE_CHUNK_SIZE = 4 * CHUNK_SIZE

#: What a put accepts: a binary file object (read until EOF) or an iterable of chunks.
Source = BinaryIO | Iterable[bytes]


@dataclass(frozen=True)
class PutResult:
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None
    #: A cheap token that changes when the object is replaced or rewritten in place,
    #: as far as the backend can tell without reading it (``stat`` fills it in; see
    #: each backend). Compared for equality only; None when the backend cannot say.
    fingerprint: str | None = None


@dataclass(frozen=True)
class Usage:
    """Bytes used by the store's objects, and its capacity when the backend knows it."""

    used_bytes: int
    object_count: int
    capacity_bytes: int | None = None
    free_bytes: int | None = None


@runtime_checkable
class Staged(Protocol):
    """Bytes written out of sight and hashed, not yet visible under any key.

    Use as a context manager: leaving it without ``commit`` discards the bytes.
    """

    size: int
    sha256: str

    def commit(self, key: str) -> None:
        """Publish the staged bytes under ``key``, create-only (AlreadyExists if taken)."""
        ...

    def replace(self, key: str) -> None:
        """Publish the staged bytes under ``key`` over whatever is there, atomically."""
        ...

    def discard(self) -> None:
        """Drop the staged bytes; safe to call more than once and after commit."""
        ...

    def __enter__(self) -> Staged: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Store(Protocol):
    """A backend holding immutable objects by key."""

    #: The URL the store was opened from, with credentials removed.
    url: str

    def put(self, key: str, source: Source) -> PutResult:
        """Stream ``source`` into a new object at ``key`` (create-only, atomic)."""
        ...

    def replace(self, key: str, source: Source) -> PutResult:
        """Stream ``source`` to ``key`` whether or not an object is there; atomic (a
        reader sees the old object or the whole new one). Not create-only: only for
        putting good bytes over an object known to be wrong."""
        ...

    def stage(self, source: Source) -> Staged:
        """Stream ``source`` into hidden storage, hashing it, for a later ``commit``.

        Content-addressed writers use this: the key (the hash) is only known after
        the bytes have been read.
        """
        ...

    def open(self, key: str) -> Iterator[bytes]:
        """Stream the object's bytes in chunks."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``start`` (fewer at the end of the object)."""
        ...

    def stat(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, keys: Iterable[str]) -> None:
        """Delete every key given; missing keys are ignored."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Stream every object whose key starts with ``prefix`` (no particular order)."""
        ...

    def usage(self) -> Usage: ...

    def read_marker(self) -> bytes | None:
        """The store's identity marker, or None if it has none (or no root)."""
        ...

    def initialize(self, marker: bytes) -> None:
        """Create the store (its root, where it has one) and write ``marker``,
        create-only: AlreadyExists, and the marker untouched, if it has one."""
        ...

    def close(self) -> None: ...


def fingerprint_of(store: Store, key: str) -> str | None:
    """The object's fingerprint, to record right after its bytes were hashed right;
    None when the store cannot say now (gc then re-hashes before relying on it)."""
    try:
        return store.stat(key).fingerprint
    except SafekeeperError:
        return None


def iter_source(source: Source, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the chunks of a file object or an iterable of byte chunks."""
    if isinstance(source, bytes | bytearray | memoryview):
        # Iterating bytes yields ints, and bytes(int) is that many zeros: refuse to
        # guess quietly, treat it as one chunk.
        if source:
            yield bytes(source)
        return
    if hasattr(source, "read"):
        reader: BinaryIO = source  # type: ignore[assignment]
        while chunk := reader.read(chunk_size):
            yield chunk
    else:
        for chunk in source:
            if chunk:
                yield bytes(chunk)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _pieces(source: Source) -> Iterator[bytes | memoryview]:
    """The source's bytes in chunks, reading file objects into two reused buffers.

    Buffers alternate, so a piece stays intact until the next-but-one is read;
    ``write_hashed`` is written to finish with each piece within that window.
    """
    readinto = getattr(source, "readinto", None)
    if readinto is None:
        yield from iter_source(source)
        return
    # Small files are most files: size the buffers to the file (allocating and zeroing
    # two full-size buffers per file cost more than writing a 4 KiB file).
    size = WRITE_CHUNK_SIZE
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        size = min(size, max(64 * 1024, os.fstat(source.fileno()).st_size + 1))  # type: ignore[union-attr]
    buffers = (memoryview(bytearray(size)), memoryview(bytearray(size)))
    turn = 0
    while n := readinto(buffers[turn]):
        yield buffers[turn][:n]
        turn ^= 1
    if n is None:
        raise BadInput("source is a non-blocking stream with no data ready")


#: Bytes per ``copy_file_range`` call in the kernel-copy path.
KERNEL_COPY_CHUNK = 64 * 1024 * 1024
#: Smaller files take the plain path: one read and one write beat starting a thread.
KERNEL_COPY_MIN = 16 * 1024 * 1024


def _regular_file_fd(source: Source) -> int | None:
    fileno = getattr(source, "fileno", None)
    if fileno is None or not hasattr(os, "copy_file_range"):
        return None
    try:
        fd = int(fileno())
        info = os.fstat(fd)
        big = info.st_size >= KERNEL_COPY_MIN
        return fd if stat_module.S_ISREG(info.st_mode) and big else None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)`` where libc has
    it (Linux): start writing a range back to disk without waiting for it."""
    name = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(name, use_errno=True), "sync_file_range", None)
    except OSError:
        return None
    if function is None:
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; a failure only delays

    return start


#: Starts the writeback of a copied range, so the disk writes while the rest is copied
#: and hashed and the sync that follows has little left to wait for (None: no such call).
_start_writeback = _load_sync_file_range()


def _hash_written(fd: int, digest: Any, offset: int, length: int) -> None:
    """Hash ``length`` bytes of ``fd`` from ``offset``: the bytes as written."""
    end = offset + length
    while offset < end:
        piece = os.pread(fd, min(WRITE_CHUNK_SIZE, end - offset), offset)
        if not piece:
            raise OSError(errno.EIO, "short read hashing what was written")
        digest.update(piece)
        offset += len(piece)


def kernel_copy_hashed(source: Source, fd: int) -> tuple[int, str] | None:
    """Copy a regular file into ``fd`` inside the kernel (``copy_file_range``, as ``cp``
    does) while a helper thread hashes each copied range read back from ``fd`` — so
    the hash is of the bytes written, not of a second read of the source. ``fd`` must
    be open for reading too. None when this path does not apply (not a regular file,
    another filesystem, no kernel support); nothing has been written then."""
    source_fd = _regular_file_fd(source)
    if source_fd is None:
        return None
    file: BinaryIO = source  # type: ignore[assignment]  # it has a fileno: a file object
    # The file object's position, not the descriptor's: a buffered file that was read
    # and seeked back within its buffer has its descriptor further on.
    start = file.tell()
    digest = hashlib.sha256()
    size = 0
    with ThreadPoolExecutor(1, thread_name_prefix="safekeeper-sha256") as hasher:
        pending: Future[None] | None = None
        while True:
            try:
                copied = os.copy_file_range(source_fd, fd, KERNEL_COPY_CHUNK, start + size)
            except OSError as exc:
                if size == 0 and exc.errno in (
                    errno.EXDEV,
                    errno.EINVAL,
                    errno.ENOSYS,
                    errno.EOPNOTSUPP,
                    errno.EBADF,
                ):
                    return None
                raise
            if copied == 0:
                break
            if _start_writeback is not None:
                _start_writeback(fd, size, copied)
            if pending is not None:
                pending.result()
            pending = hasher.submit(_hash_written, fd, digest, size, copied)
            size += copied
        if pending is not None:
            pending.result()
    file.seek(start + size)  # consumed, as by the read path
    return size, digest.hexdigest()


_helper = threading.local()


@contextlib.contextmanager
def shared_hasher() -> Iterator[None]:
    """In this thread, ``write_hashed`` hands its pieces to one helper thread kept for
    the whole block, instead of starting (and joining) a thread per object: an import
    of 2,000 blobs of 512 KiB otherwise starts 2,000 threads. Nested blocks share the
    outer one's helper."""
    if getattr(_helper, "executor", None) is not None:
        yield
        return
    with ThreadPoolExecutor(1, thread_name_prefix="safekeeper-sha256") as executor:
        _helper.executor = executor
        try:
            yield
        finally:
            _helper.executor = None


def write_hashed(source: Source, fd: int) -> tuple[int, str]:
    """Write all of ``source`` to ``fd`` and hash it; return (size, sha256 hex).

    SHA-256 costs about as much CPU as the write, and both release the GIL, so from
    the second piece on a helper thread hashes piece i while this thread writes it
    and reads piece i+1. That keeps a large put close to ``cp`` speed; small objects
    (one piece) never start the thread.
    """
    kernel_copy = kernel_copy_hashed(source, fd)
    if kernel_copy is not None:
        return kernel_copy
    digest = hashlib.sha256()
    size = 0
    shared: ThreadPoolExecutor | None = getattr(_helper, "executor", None)
    hasher: ThreadPoolExecutor | None = None
    pending: Future[None] | None = None
    try:
        for piece in _pieces(source):
            if size == 0:
                digest.update(piece)
            else:
                if hasher is None:
                    hasher = shared or ThreadPoolExecutor(1, thread_name_prefix="safekeeper-sha256")
                if pending is not None:
                    pending.result()  # in order, and frees the buffer _pieces reuses next
                pending = hasher.submit(digest.update, piece)
            _write_all(fd, memoryview(piece))
            size += len(piece)
    finally:
        if pending is not None:
            # Also on failure: the helper must be done with a piece (a buffer _pieces
            # reuses, a shared helper's next job) before anything else touches it.
            pending.exception()
        if hasher is not None and hasher is not shared:
            hasher.shutdown(wait=True)
    if pending is not None:
        pending.result()
    return size, digest.hexdigest()


class HashingCounter:
    """SHA-256 and size of bytes as they stream past."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class SpooledStaged:
    """``Staged`` bytes in a local temp file: ``commit`` hands the file and key to the
    backend's ``publish``; leaving without a commit removes the file."""

    def __init__(
        self,
        path: Path,
        size: int,
        sha256: str,
        publish: Callable[[Path, str], None],
        swap: Callable[[Path, str], None],
    ) -> None:
        self._path: Path | None = path
        self._publish = publish
        self._swap = swap
        self.size = size
        self.sha256 = sha256

    def commit(self, key: str) -> None:
        self._hand_over(self._publish, key)

    def replace(self, key: str) -> None:
        self._hand_over(self._swap, key)

    def _hand_over(self, publish: Callable[[Path, str], None], key: str) -> None:
        if self._path is None:
            raise BadInput("staged object was already committed or discarded")
        publish(self._path, key)  # on failure the file stays, for discard()
        self.discard()

    def discard(self) -> None:
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None

    def __enter__(self) -> SpooledStaged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def deferred_sync(store: Store) -> AbstractContextManager[None]:
    """The store's shared-sync mode for this thread (filesystem stores), or nothing
    for stores whose every write is durable on its own (S3, memory). Whoever defers
    must call ``sync_store`` before relying on what was written."""
    defer = getattr(store, "deferred_sync", None)
    return defer() if defer is not None else contextlib.nullcontext()


def prepare_key(store: Store, key: str) -> None:
    """Let the store get ready for an object at ``key`` ahead of the publish (a
    filesystem store makes its directories), so threads can do that part in parallel;
    nothing for stores that need nothing. Creates no object."""
    prepare = getattr(store, "prepare", None)
    if prepare is not None:
        prepare(key)


def sync_store(store: Store) -> None:
    sync = getattr(store, "sync", None)
    if sync is not None:
        sync()

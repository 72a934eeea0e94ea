"""A store in a local (or mounted) directory: ``file:///abs/path``.

Objects are plain read-only files placed by a layout (see ``layouts``), so an
operator can inspect or back them up with ordinary tools.

Writes are atomic, durable and create-only without any lock:

1. stream the source into ``<root>/.tmp/<random>.tmp`` (same filesystem as the
   objects), hashing in the same loop, then ``fsync`` the file;
2. publish with ``os.link(tmp, final)``: the kernel creates the name only if it is
   free (EEXIST becomes AlreadyExists and the existing object is untouched), and a
   reader sees either no file or the complete one;
3. unlink the temp name and ``fsync`` the object's directory plus the parent of any
   directory created on the way, so the new name survives a crash.

Many small writes can share their syncs: inside ``deferred_sync()`` steps 1 and 3
skip their fsyncs, and the writer calls ``sync()`` — one ``syncfs`` of the whole
filesystem — after staging (before any link) and again after publishing (before it
records anything). The ingest of a directory does that per batch, one sync serving
both purposes when the next batch was staged before it (``services.copies.ingest``), and
``prepare`` makes an object's directories ahead of its publish, in the staging
threads.

A crash can leave files in ``.tmp``; listings never show them and ``clean_temp``
removes old ones. The identity marker ``.safekeeper-store`` sits in the root; like
``.tmp`` it starts with a dot, which no key does, so listings skip it. Opening a
store creates nothing; ``initialize`` creates the root, once. Publishing needs hard
links; a filesystem without them (FAT, some network mounts) fails with
PermanentStoreError rather than losing create-only.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat as stat_module
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    NotFound,
    PermanentStoreError,
    SafekeeperError,
    TransientStoreError,
)
from safekeeper.stores.base import (
    CHUNK_SIZE,
    WRITE_CHUNK_SIZE,
    ObjectInfo,
    PutResult,
    Source,
    SpooledStaged,
    Staged,
    Usage,
    write_hashed,
)
from safekeeper.stores.layouts import DEFAULT_INTERVAL_SIZE, Layout, validate_prefix
from safekeeper.stores.marker import MARKER_NAME, MAX_MARKER_SIZE

TMP_DIR = ".tmp"

#: Unlinks of one bulk delete run in this many threads once there are enough keys. An
#: unlink mostly waits for the filesystem's journal, and waiting unlinks share one
#: journal commit: 10,000 unlinks took 1.1-1.7 s in 4-8 threads against 8-12 s in one
#: on a busy ext4 disk (bench/RESULTS.md, "Issue 17: gc").
DELETE_THREADS = 8
_DELETE_CHUNK = 256

_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR}
# Retrying cannot help: the disk is full, access is refused, or a feature is missing.
_PERMANENT = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
    errno.ENAMETOOLONG, errno.EISDIR, errno.EMLINK, errno.EXDEV, errno.ENOTSUP,
    errno.EOPNOTSUPP, errno.ELOOP,
}  # fmt: skip


def os_error(exc: OSError, what: str) -> SafekeeperError:
    """Translate an OSError into the store error that tells callers what to do."""
    message = f"{what}: {exc.strerror or exc}"
    if exc.errno in _NOT_FOUND:
        return NotFound(message)
    if exc.errno == errno.EEXIST:
        return AlreadyExists(message)
    if exc.errno in _PERMANENT:
        return PermanentStoreError(message)
    return TransientStoreError(message)  # EIO, EAGAIN, EINTR, ESTALE, ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(directory: Path) -> None:
    """Flush every dirty page and inode of the filesystem holding ``directory``."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()  # no syncfs here (not Linux): the whole machine, but still correct
    finally:
        os.close(fd)


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "syncfs") else None


_LIBC = _load_libc()


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _stream_file(f: BinaryIO) -> Iterator[bytes]:
    # try/finally closes the file when the consumer stops early (close() or GC).
    try:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk
    finally:
        f.close()


class FileStore:
    """Objects as files under ``root``, placed by ``layout``."""

    def __init__(self, root: Path, url: str, layout: Layout) -> None:
        self.root = root
        self.url = url
        self.layout = layout
        self.tmp_dir = root / TMP_DIR
        self._root = os.fspath(root)
        # Per thread: only the thread inside deferred_sync() skips its fsyncs, so a
        # concurrent writer in another thread keeps its own durability.
        self._local = threading.local()
        # Nothing is created here: only ``initialize`` makes a root. A root that is
        # missing (or an empty mount point) must fail, not quietly become a new store.

    @classmethod
    def from_url(
        cls,
        /,
        url: str,
        layout: str = "fanout",
        interval_size: int = DEFAULT_INTERVAL_SIZE,
        **unknown: object,
    ) -> FileStore:
        if unknown:
            raise BadInput(f"unknown file store option(s): {', '.join(sorted(unknown))}")
        parts = urlsplit(url)
        if parts.scheme.lower() != "file":
            raise BadInput(f"not a file:// URL: {url!r}")
        if parts.netloc not in ("", "localhost"):
            raise BadInput(f"file URL must be file:///absolute/path, not {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise BadInput(f"file store path must be absolute: {url!r}")
        return cls(Path(os.path.normpath(path)), url, Layout(layout, interval_size))

    # -- paths ---------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / self.layout.path_for_key(key)

    def _fspath(self, key: str) -> str:
        """``_path`` as a string, for the per-object hot paths (a ``Path`` costs more
        to build than the stat or unlink it is for)."""
        return f"{self._root}/{self.layout.path_for_key(key)}"

    def _new_tmp(self) -> tuple[Path, int]:
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.tmp"
        # O_RDWR: the kernel-copy path hashes what it wrote by reading it back.
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            # Read-only from birth: a published object is never modified in place.
            return tmp, os.open(tmp, flags, 0o444)
        except FileNotFoundError:
            self._make_tmp_dir()  # .tmp removed by hand: make it again, inside the root
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot create temp file") from exc
        try:
            return tmp, os.open(tmp, flags, 0o444)
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot create temp file") from exc

    def _make_tmp_dir(self) -> None:
        """Create ``.tmp`` inside the root — never the root itself."""
        try:
            self.tmp_dir.mkdir(exist_ok=True)
        except FileNotFoundError as exc:
            raise PermanentStoreError(
                f"{self.url}: the store's root {self.root} does not exist (a disk not "
                "mounted?); safekeeper creates a root only when a location is first set up"
            ) from exc
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot create {TMP_DIR}") from exc

    # -- identity ------------------------------------------------------------

    def read_marker(self) -> bytes | None:
        try:
            with builtins.open(self.root / MARKER_NAME, "rb") as f:
                return f.read(MAX_MARKER_SIZE + 1)
        except OSError as exc:
            if exc.errno in _NOT_FOUND:
                return None
            raise os_error(exc, f"{self.url}: cannot read {MARKER_NAME}") from exc

    def initialize(self, marker: bytes) -> None:
        """Create the root (and parents), ``.tmp`` and the marker, create-only."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot create the store's root") from exc
        tmp, _, _ = self._write_tmp([marker])
        try:
            os.link(tmp, self.root / MARKER_NAME)
            _fsync_dir(self.root)
            _fsync_dir(self.root.parent)
        except FileExistsError as exc:
            raise AlreadyExists(f"{self.url}: the store already has a marker") from exc
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot write {MARKER_NAME}") from exc
        finally:
            _unlink_quietly(tmp)

    def _make_parents(self, directory: Path) -> list[Path]:
        """Create ``directory`` and missing ancestors (never the root); return the ones
        created. ``mkdir`` first and climb only when the parent is missing: one system
        call per object where a ``stat`` walk took two or three (a put of many small
        files makes a fan-out directory for almost every one)."""
        if directory == self.root:
            return []
        try:
            os.mkdir(directory)
            return [directory]
        except FileExistsError:
            return []  # there already (or made by a concurrent writer, who syncs it)
        except FileNotFoundError:
            if directory.parent == directory:
                raise
        created = self._make_parents(directory.parent)
        try:
            os.mkdir(directory)  # a missing root raises here: it is never created
            created.append(directory)
        except FileExistsError:
            pass
        return created

    # -- writing -------------------------------------------------------------

    @contextlib.contextmanager
    def deferred_sync(self) -> Iterator[None]:
        """Within (in this thread), writes skip their fsyncs; the caller must ``sync()``
        before it relies on what it wrote (before publishing staged files, before
        recording them)."""
        depth = getattr(self._local, "deferred", 0)
        self._local.deferred = depth + 1
        try:
            yield
        finally:
            self._local.deferred = depth

    @property
    def _deferred(self) -> bool:
        return bool(getattr(self._local, "deferred", 0))

    def sync(self) -> None:
        """Make everything written to this store so far durable."""
        try:
            _syncfs(self.root)
        except OSError as exc:
            raise os_error(exc, f"{self.url}: sync failed") from exc

    def _write_tmp(self, source: Source) -> tuple[Path, int, str]:
        """Stream ``source`` into a new fsynced temp file; return (path, size, sha256)."""
        tmp, fd = self._new_tmp()
        try:
            try:
                size, sha256 = write_hashed(source, fd)
                if not self._deferred:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise os_error(exc, f"{self.url}: writing temp file failed") from exc
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp, size, sha256

    def _publish(self, tmp: Path, key: str) -> None:
        """Give the temp file its final name, create-only, then make that durable."""
        final = self._path(key)
        created: list[Path] = []
        try:
            try:
                os.link(tmp, final)  # its directory is usually there (``prepare``)
            except FileNotFoundError:
                created = self._make_parents(final.parent)
                os.link(tmp, final)
        except FileExistsError as exc:
            raise AlreadyExists(f"{self.url}: object {key!r} already exists") from exc
        except OSError as exc:
            if exc.errno in _NOT_FOUND:  # temp file cleaned away, or a file blocks the path
                raise PermanentStoreError(f"{self.url}: cannot publish {key!r}: {exc}") from exc
            raise os_error(exc, f"{self.url}: cannot publish {key!r}") from exc
        # The caller removes the temp name (put: finally; Staged: discard).
        self._sync_published(final, created, key)

    def prepare(self, key: str) -> None:
        """Make the directories an object at ``key`` will sit in, durable as any other
        write here (at once, or by the deferred ``sync``). An empty directory is
        harmless: publishing later finds it and creates only the name."""
        final = self._path(key)
        try:
            created = self._make_parents(final.parent)
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot make the directory for {key!r}") from exc
        if created and not self._deferred:
            try:
                for directory in created:
                    _fsync_dir(directory.parent)
            except OSError as exc:
                raise os_error(exc, f"{self.url}: cannot sync {key!r}") from exc

    def _swap(self, tmp: Path, key: str) -> None:
        """Rename the temp file over ``key``: atomic, so a reader sees the old object or
        the new one, never neither (``replace``)."""
        final = self._path(key)
        try:
            created = self._make_parents(final.parent)
            os.replace(tmp, final)
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot replace {key!r}") from exc
        self._sync_published(final, created, key)

    def _sync_published(self, final: Path, created: list[Path], key: str) -> None:
        """Make a new name durable: its directory, and the parents of directories just
        made for it (unless durability is deferred to the batch's ``sync``)."""
        if self._deferred:
            return
        try:
            _fsync_dir(final.parent)
            for directory in created:
                _fsync_dir(directory.parent)
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot sync {key!r}") from exc

    def replace(self, key: str, source: Source) -> PutResult:
        self._path(key)  # BadInput before reading anything
        tmp, size, sha256 = self._write_tmp(source)
        try:
            self._swap(tmp, key)
        finally:
            _unlink_quietly(tmp)
        return PutResult(size=size, sha256=sha256)

    def put(self, key: str, source: Source) -> PutResult:
        final = self._path(key)  # BadInput before reading anything
        if os.path.lexists(final):  # fail fast; os.link below is the real check
            raise AlreadyExists(f"{self.url}: object {key!r} already exists")
        tmp, size, sha256 = self._write_tmp(source)
        try:
            self._publish(tmp, key)
        finally:
            _unlink_quietly(tmp)
        return PutResult(size=size, sha256=sha256)

    def stage(self, source: Source) -> Staged:
        tmp, size, sha256 = self._write_tmp(source)
        return SpooledStaged(tmp, size, sha256, self._publish, self._swap)

    # -- reading -------------------------------------------------------------

    def _open_file(self, key: str) -> BinaryIO:
        path = self._fspath(key)
        try:
            # No context manager: the returned generator owns and closes the file.
            f = builtins.open(path, "rb", buffering=0)  # noqa: SIM115
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise NotFound(f"{self.url}: no object {key!r}") from exc
            raise os_error(exc, f"{self.url}: cannot open {key!r}") from exc
        return f

    def open(self, key: str) -> Iterator[bytes]:
        return _stream_file(self._open_file(key))  # NotFound now, not on first next()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise BadInput(f"bad range: start={start} length={length}")
        with self._open_file(key) as f:
            parts = []
            try:
                while length > 0:
                    chunk = os.pread(f.fileno(), min(length, WRITE_CHUNK_SIZE), start)
                    if not chunk:
                        break
                    parts.append(chunk)
                    start += len(chunk)
                    length -= len(chunk)
            except OSError as exc:
                raise os_error(exc, f"{self.url}: cannot read {key!r}") from exc
        return b"".join(parts)

    def _stat_file(self, key: str) -> os.stat_result | None:
        path = self._fspath(key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NOT_FOUND:
                return None
            raise os_error(exc, f"{self.url}: cannot stat {key!r}") from exc
        return st if stat_module.S_ISREG(st.st_mode) else None

    def stat(self, key: str) -> ObjectInfo:
        st = self._stat_file(key)
        if st is None:
            raise NotFound(f"{self.url}: no object {key!r}")
        return ObjectInfo(
            key,
            st.st_size,
            datetime.fromtimestamp(st.st_mtime, UTC),
            # A rewrite in place changes mtime and ctime (to the kernel's coarse clock);
            # a replacement changes the inode (unless reused) and ctime.
            fingerprint=f"file:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}",
        )

    def exists(self, key: str) -> bool:
        return self._stat_file(key) is not None

    def delete(self, keys: Iterable[str]) -> None:
        paths = [(key, self._fspath(key)) for key in keys]  # BadInput before any unlink
        if len(paths) <= _DELETE_CHUNK:
            self._unlink(paths)
            return
        chunks = [paths[i : i + _DELETE_CHUNK] for i in range(0, len(paths), _DELETE_CHUNK)]
        threads = min(DELETE_THREADS, len(chunks))
        with ThreadPoolExecutor(threads, thread_name_prefix="safekeeper-unlink") as pool:
            futures = [pool.submit(self._unlink, chunk) for chunk in chunks]
        # Every chunk ran to its end: report the first error only then, so a caller
        # that checks what is gone finds every other object gone.
        for future in futures:
            future.result()

    def _unlink(self, paths: list[tuple[str, str]]) -> None:
        """Unlink each path; one that fails does not stop the others (the first
        failure is raised at the end)."""
        failure: SafekeeperError | None = None
        for key, path in paths:
            try:
                os.unlink(path)
            except OSError as exc:
                if exc.errno not in _NOT_FOUND and failure is None:
                    failure = os_error(exc, f"{self.url}: cannot delete {key!r}")
                    failure.__cause__ = exc
        if failure is not None:
            raise failure

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)  # BadInput now, not on first next()
        return self._walk(prefix)

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        start = self.layout.dir_for_prefix(prefix)
        stack = [start]
        while stack:
            rel_dir = stack.pop()
            try:
                with os.scandir(self.root / rel_dir) as entries:
                    for entry in entries:
                        # Keys and layout directories never start with '.': this skips
                        # .tmp and anything an operator's tools left behind.
                        if entry.name.startswith("."):
                            continue
                        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(rel)
                            continue
                        if not entry.name.startswith(prefix):
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        try:
                            key = self.layout.key_for_path(rel)
                        except BadInput:
                            continue  # a stray file, not an object of this layout
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # deleted while we walked
                        modified = datetime.fromtimestamp(st.st_mtime, UTC)
                        yield ObjectInfo(key, st.st_size, modified)
            except FileNotFoundError:
                continue  # the directory vanished, or the prefix has none
            except OSError as exc:
                raise os_error(exc, f"{self.url}: cannot list {rel_dir or '/'}") from exc

    def usage(self) -> Usage:
        used = count = 0
        for info in self._walk(""):
            used += info.size
            count += 1
        try:
            disk = shutil.disk_usage(self.root)
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot read disk usage") from exc
        return Usage(used, count, capacity_bytes=disk.total, free_bytes=disk.free)

    def clean_temp(self, older_than_seconds: float = 24 * 3600) -> int:
        """Remove temp files older than ``older_than_seconds``; return how many.

        Temp files are left by crashed writers. Pick an age well above the longest
        write or the longest a ``Staged`` is held, or a live write loses its file.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        if not self.tmp_dir.is_dir():
            return 0  # nothing written yet (or no root: that is for the writer to report)
        try:
            with os.scandir(self.tmp_dir) as entries:
                for entry in entries:
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:
                        continue
        except OSError as exc:
            raise os_error(exc, f"{self.url}: cannot clean {TMP_DIR}") from exc
        return removed

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

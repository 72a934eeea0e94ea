"""Extracted package trees in the cache location: built on first use, exactly once.

The cache holds derived data, never copies: a tree is the members of a zip blob
unpacked at ``<cache dir>/<sha[:2]>/<sha>/<member path>``, rebuilt whenever it is
missing from any present copy of the zip (inbox, buffer or archive, S3 included). No
``copies`` row is ever written for it; the ``extracted_trees`` table records each tree
(size, last access) so the cache can be evicted under watermarks (``eviction``).

Exactly-once extraction, in any number of threads and processes:

1. a per-blob ``threading.Lock`` (threads of this process queue here, holding no file);
2. ``flock`` on ``<cache dir>/.locks/<sha>.lock`` (other processes: servers, gc);
3. under both, re-check: a tree recorded in the database *and* on disk is done;
4. else spool the zip to a temp file (hash-checked), unpack it into a temp dir inside
   the cache dir, ``syncfs``, ``rename`` into place (the atomic publish), then record
   the row and a ``cache-extract`` audit entry (one per extraction: what tests count).

A crash before the rename leaves only a temp dir; after it, a complete tree without a
row, which the next ``tree_for`` adopts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname
from weakref import WeakKeyDictionary

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from safekeeper.db import audit
from safekeeper.db.models import Blob, ExtractedTree, Location
from safekeeper.errors import ConfigError, NotFound, PackageRejected, PermanentStoreError
from safekeeper.packages.validate import safe_member_path
from safekeeper.stores.filesystem import _syncfs

if TYPE_CHECKING:
    from safekeeper.archive import Archive

CHUNK = 1024 * 1024
#: ``last_access`` is written at most this often per tree (not on every request).
TOUCH_INTERVAL = timedelta(minutes=1)
ACTOR = "package-cache"


@dataclass(frozen=True)
class CacheLayout:
    """Where a cache location's trees, locks and temp dirs are on disk."""

    location: str
    root: Path

    @classmethod
    def of(cls, archive: Archive) -> CacheLayout:
        name = archive.config.cache_location
        if name is None:
            raise ConfigError(
                f"{archive.config_origin}: no cache location: serving packages needs a "
                'location with kind = "cache" and a local file: store'
            )
        url = archive.config.store_url(name)
        return cls(name, Path(url2pathname(urlparse(url).path)))

    def tree(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def tree_text(self, sha256: str) -> str:
        """``tree`` as a string, without building Path objects (the serving hot path)."""
        return f"{self.root}{os.sep}{sha256[:2]}{os.sep}{sha256}"

    @property
    def work(self) -> Path:
        return self.root / ".tmp"

    @contextlib.contextmanager
    def file_lock(self, sha256: str) -> Iterator[None]:
        """The cross-process lock of one tree. Lock files are never deleted: removing
        one while another process waits on it would let a third lock a new file."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{sha256}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def discard(self, tree: Path) -> None:
        """Rename a tree out of sight first (readers see it gone at once), then remove it."""
        self.work.mkdir(parents=True, exist_ok=True)
        trash = Path(tempfile.mkdtemp(prefix="evicted-", dir=self.work))
        with contextlib.suppress(FileNotFoundError):
            os.rename(tree, trash / "tree")
        shutil.rmtree(trash, ignore_errors=True)


def location_id(session: Session, name: str) -> int:
    found = session.scalar(select(Location.id).where(Location.name == name))
    if found is None:
        raise NotFound(f"no location named {name!r} in the catalog")
    return found


class PackageCache:
    """The extracted trees of one archive's cache location (one per archive per process:
    get it with ``package_cache(archive)``)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.layout = CacheLayout.of(archive)
        #: Trees extracted by this instance (tests; the audit log counts across processes).
        self.extractions = 0
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        #: Trees checked against the database in this process → their last recorded access.
        self._ready: dict[str, datetime] = {}
        self._location_id: int | None = None

    # -- the fast path the server uses on every request --------------------------------

    def ready(self, sha256: str) -> bool:
        """True when this process has seen the tree recorded and on disk (no I/O)."""
        return sha256 in self._ready

    def forget(self, sha256: str) -> None:
        """The tree turned out to be gone (evicted, deleted): check it again next time."""
        self._ready.pop(sha256, None)

    def touch_due(self, sha256: str) -> bool:
        last = self._ready.get(sha256)
        return last is not None and self.archive.clock() - last >= TOUCH_INTERVAL

    def touch(self, sha256: str) -> None:
        """Record an access (for least-recently-used eviction); a database write, so
        callers only do it when ``touch_due``."""
        now = self.archive.clock()
        self._ready[sha256] = now
        with self.archive.db.write() as session:
            blob_id = session.scalar(select(Blob.id).where(Blob.sha256 == sha256))
            session.execute(
                update(ExtractedTree)
                .where(
                    ExtractedTree.blob_id == blob_id,
                    ExtractedTree.location_id == self._location(session),
                )
                .values(last_access=now)
            )

    # -- ensuring a tree exists ------------------------------------------------------------

    def tree_for(self, sha256: str) -> Path:
        """The tree of zip blob ``sha256``, extracted first if it is not there."""
        tree = self.layout.tree(sha256)
        # The lock file is a write too: none on the empty mount point of a cache disk
        # that is away (``_ensure`` reads the marker again once the lock is held).
        self.archive.store(self.layout.location, fresh=True)
        with self._thread_lock(sha256), self.layout.file_lock(sha256):
            extracted = self._ensure(sha256, tree)
        if extracted:
            from safekeeper.packages.eviction import evict  # eviction imports this module

            evict(self.archive, self.archive.clock(), keep={sha256})
        return tree

    def _thread_lock(self, sha256: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(sha256, threading.Lock())

    def _location(self, session: Session) -> int:
        if self._location_id is None:
            self._location_id = location_id(session, self.layout.location)
        return self._location_id

    def _ensure(self, sha256: str, tree: Path) -> bool:
        """Under both locks: make the tree exist and be recorded; True if extracted."""
        with self.archive.db.read() as session:
            blob_id = session.scalar(select(Blob.id).where(Blob.sha256 == sha256))
            if blob_id is None:
                raise NotFound(f"no blob {sha256}")
            row = session.get(ExtractedTree, (blob_id, self._location(session)))
            last_access = row.last_access if row is not None else None
        on_disk = tree.is_dir()
        if last_access is not None and on_disk:
            self._ready[sha256] = last_access
            return False
        now = self.archive.clock()
        if on_disk:
            # Published by an extraction that died before recording it: complete
            # (the rename is atomic), so adopt it.
            size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
            self._record(sha256, blob_id, size, now, None)
            return False
        # Not found is evidence only under a fresh identity check: an unmounted cache
        # disk shows no tree, and one extracted onto its empty mount point would fill
        # the disk beneath and be recorded for a store that is not there.
        self.archive.store(self.layout.location, fresh=True)
        members, size = self._extract(sha256, tree)
        self._record(sha256, blob_id, size, now, {"members": members, "bytes": size})
        self.extractions += 1
        return True

    def _record(
        self, sha256: str, blob_id: int, size: int, now: datetime, extracted: dict[str, int] | None
    ) -> None:
        with self.archive.db.write() as session:
            where = self._location(session)
            session.execute(
                delete(ExtractedTree).where(
                    ExtractedTree.blob_id == blob_id, ExtractedTree.location_id == where
                )
            )
            session.add(
                ExtractedTree(
                    blob_id=blob_id, location_id=where, size=size, created_at=now, last_access=now
                )
            )
            if extracted is not None:
                entry = {
                    "at": now,
                    "actor": ACTOR,
                    "action": "cache-extract",
                    "blob_sha256": sha256,
                    "location": self.layout.location,
                    "rule": None,
                    "reason": "extracted on first request",
                    "evidence": {**extracted, "pid": os.getpid()},
                }
                audit.record(session, [entry])
        self._ready[sha256] = now

    def _extract(self, sha256: str, tree: Path) -> tuple[int, int]:
        self.layout.work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="extract-", dir=self.layout.work) as work:
            spooled = Path(work) / "package.zip"
            with spooled.open("w+b") as spool:
                self._spool(sha256, spool)
                staging = Path(work) / "tree"
                staging.mkdir()
                limits = self.archive.config.packages
                members, size = unpack(
                    spool, staging, limits.max_members, limits.max_extracted_size
                )
            _syncfs(staging)
            tree.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, tree)
        return members, size

    def _spool(self, sha256: str, spool: BinaryIO) -> None:
        digest = hashlib.sha256()
        for chunk in self.archive.open_blob(sha256):
            digest.update(chunk)
            spool.write(chunk)
        if digest.hexdigest() != sha256:
            raise PermanentStoreError(
                f"the copy of {sha256} that was read does not hash to its id; run verify"
            )
        spool.seek(0)


def unpack(source: BinaryIO, dest: Path, max_members: int, max_size: int) -> tuple[int, int]:
    """Write the zip's file members under ``dest``; return (files, bytes).

    Checked again here although the zip was validated on upload (a zip can reach a
    store by other routes): every path through ``safe_member_path``, no symlinks, no
    encryption, never more bytes than a member declares nor than ``max_size`` in all.
    """
    try:
        with zipfile.ZipFile(source) as package:
            infos = package.infolist()
            if len(infos) > max_members:
                raise PackageRejected(
                    "too_many_members", f"{len(infos)} members; at most {max_members}"
                )
            files, total = 0, 0
            for info in infos:
                if info.is_dir():
                    continue
                files += 1
                total += _unpack_member(package, info, dest, max_size - total)
            return files, total
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise PackageRejected("bad_zip", f"not a readable zip: {exc}") from exc


def _unpack_member(package: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int) -> int:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        raise PackageRejected("symlink", f"member {name!r} is a symbolic link", name)
    if info.flag_bits & 0x1:
        raise PackageRejected("encrypted", f"member {name!r} is encrypted", name)
    member = safe_member_path(name)
    if info.file_size > budget:
        raise PackageRejected("too_large", "the members exceed the extracted size limit", name)
    target = dest / member
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with package.open(info) as reader, target.open("xb") as out:
            while chunk := reader.read(min(CHUNK, info.file_size - written + 1)):
                written += len(chunk)
                if written > info.file_size:
                    raise PackageRejected(
                        "size_mismatch", f"member {name!r} is larger than it declares", name
                    )
                out.write(chunk)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise PackageRejected(
            "duplicate_member", f"member {name!r} collides with another member", name
        ) from exc
    return written


_caches: WeakKeyDictionary[Archive, PackageCache] = WeakKeyDictionary()
_caches_guard = threading.Lock()


def package_cache(archive: Archive) -> PackageCache:
    """The archive's one ``PackageCache`` in this process (its locks must be shared)."""
    with _caches_guard:
        cache = _caches.get(archive)
        if cache is None:
            cache = _caches[archive] = PackageCache(archive)
        return cache

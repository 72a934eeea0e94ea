"""``Archive``: the Python API — one configuration, its database and its stores.

    from safekeeper import open_archive
    with open_archive("safekeeper-data") as archive:
        outcome = archive.put_file("report.pdf", ref="docs:reports/q3")
        for chunk in archive.open_blob(outcome.sha256): ...

The archive owns no logic of its own: it wires configuration, database and stores
together and hands them to the services, which own the transactions.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from safekeeper.config import Config, load_config, make_files_private
from safekeeper.db.catalog import catalog_is_current, sync_catalog
from safekeeper.db.engine import SESSIONS, Database
from safekeeper.db.models import utcnow
from safekeeper.errors import NotFound, StoreError
from safekeeper.ids import RefSpec, parse_ref
from safekeeper.services.copies import identity, ingest, inventory
from safekeeper.services.copies.ingest import PutOutcome
from safekeeper.stores import Store, open_store
from safekeeper.stores.base import deferred_sync, sync_store
from safekeeper.stores.filesystem import FileStore

Clock = Callable[[], datetime]

#: A temp file older than this belongs to a writer that died; younger ones may be live.
STALE_TEMP_SECONDS = 6 * 3600


class Archive:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = utcnow,
        migrate: bool = True,
        moving: Collection[str] = (),
    ) -> None:
        """``moving``: locations whose changed store or kind ``locations move`` is about
        to confirm (any other such change refuses to open, see ``sync_catalog``)."""
        self.config = config
        self.clock = clock
        self._migrate = migrate
        if config.private_files:
            make_files_private(config.data_dir)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(config.database_url, migrate=migrate)
        self._stores: dict[str, Store] = {}
        #: Per open store: the marker uuid confirmed, and when (time.monotonic).
        self._identities: dict[str, tuple[str, float]] = {}
        self._stores_lock = threading.Lock()
        self._sessions_db: Database | None = None
        self._sessions_db_lock = threading.Lock()
        with self.db.read() as session:
            current = not moving and catalog_is_current(session, config)
        if not current:  # something to add, follow or refuse: decided under the lock
            with self.db.write() as session:
                sync_catalog(session, config, moving=moving)

    # -- plumbing the services use -------------------------------------------------

    def store(self, location: str, *, fresh: bool = False) -> Store:
        """The (cached) store of a configured location, once its identity marker is
        confirmed to be the one the catalog records (set up on the location's first
        use); StoreIdentityError otherwise. The marker is read again when the last
        check is older than ``IDENTITY_TTL`` — or now, with ``fresh`` (before a
        destructive batch)."""
        if location not in self.config.locations:
            raise NotFound(f"no location named {location!r} in {self.config_origin}")
        with self._stores_lock:
            store = self._stores.get(location)
            if store is not None:
                uuid, checked = self._identities[location]
        if store is None:
            # Outside the lock: confirming reads the database, and a caller may hold
            # a write transaction while another thread waits here.
            options = self.config.locations[location].store_options()
            store = open_store(self.config.store_url(location), options)
            uuid = identity.confirm(self, location, store)
            # Temp files of writers that crashed long ago (see services.copies.ingest).
            clean_temp = getattr(store, "clean_temp", None)
            if clean_temp is not None:
                clean_temp(STALE_TEMP_SECONDS)
            with self._stores_lock:
                if location not in self._stores:
                    self._stores[location] = store
                    self._identities[location] = (uuid, time.monotonic())
                return self._stores[location]
        if fresh or time.monotonic() - checked > identity.IDENTITY_TTL:
            try:
                identity.recheck(location, store, uuid)
            except StoreError:
                with self._stores_lock:  # check again on every use until it passes
                    if location in self._identities:
                        self._identities[location] = (uuid, float("-inf"))
                raise
            with self._stores_lock:
                if location in self._identities:
                    self._identities[location] = (uuid, time.monotonic())
        return store

    def forget_store(self, location: str) -> None:
        """Drop the cached store of ``location`` (its row was pointed elsewhere)."""
        with self._stores_lock:
            store = self._stores.pop(location, None)
            self._identities.pop(location, None)
        if store is not None:
            store.close()

    @property
    def sessions_db(self) -> Database:
        """The sign-in sessions database, opened (and migrated) on first use: commands
        that never touch sessions never open it."""
        opened = self._sessions_db
        if opened is not None:  # the hot path of every signed-in request: no lock
            return opened
        with self._sessions_db_lock:
            if self._sessions_db is None:
                self._sessions_db = Database(
                    self.config.sessions_database_url, migrate=self._migrate, schema=SESSIONS
                )
            return self._sessions_db

    def uses_serial_keys(self, location: str) -> bool:
        """True for ``interval`` layouts, which take integer keys: blob serial numbers."""
        settings = self.config.locations[location]
        return settings.layout == "interval" and settings.store.startswith("file:")

    def key_for(self, location: str, sha256: str, blob_id: int) -> str:
        """The store key of a blob at a location."""
        return str(blob_id) if self.uses_serial_keys(location) else sha256

    @contextmanager
    def deferred_durability(self) -> Iterator[None]:
        """In this thread, writes to filesystem stores skip their own fsyncs until
        ``sync_stores``; used to make many small writes durable with one sync."""
        with ExitStack() as stack:
            for name in self.config.locations:
                try:
                    store = self.store(name)
                except StoreError:
                    continue  # refused or unreachable: whoever uses it gets the error
                stack.enter_context(deferred_sync(store))
            yield

    def sync_stores(self) -> None:
        """Make everything written to the stores so far durable. A directory store's
        sync is ``syncfs`` of its whole filesystem, so stores on one filesystem (an
        inbox and an archive on the same disk) are synced once."""
        with self._stores_lock:
            stores = list(self._stores.values())
        synced: set[int] = set()
        for store in stores:
            if isinstance(store, FileStore):
                try:
                    device = os.stat(store.root).st_dev
                except OSError:
                    device = None  # its own sync reports the trouble
                if device in synced:
                    continue
                sync_store(store)
                if device is not None:
                    synced.add(device)
                continue
            sync_store(store)

    @property
    def config_origin(self) -> str:
        return str(self.config.source) if self.config.source else "the default configuration"

    def close(self) -> None:
        with self._stores_lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            self._identities.clear()
        with self._sessions_db_lock:
            if self._sessions_db is not None:
                self._sessions_db.close()
                self._sessions_db = None
        self.db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the public API: thin calls into the services -------------------------------

    def put_file(
        self, path: str | Path, ref: str | RefSpec | None = None, location: str | None = None
    ) -> PutOutcome:
        with Path(path).open("rb") as source:
            return ingest.put_stream(self, source, _ref(ref), location, name=str(path))

    def put_stream(
        self, source: BinaryIO, ref: str | RefSpec | None = None, location: str | None = None
    ) -> PutOutcome:
        return ingest.put_stream(self, source, _ref(ref), location)

    def put_bytes(self, data: bytes, ref: str | RefSpec | None = None) -> PutOutcome:
        return ingest.put_stream(self, [data], _ref(ref), None)

    def open_blob(self, blob: str) -> Iterator[bytes]:
        return inventory.open_blob(self, blob)

    def read_blob(self, blob: str) -> bytes:
        """The blob's bytes, checked against its id (PermanentStoreError if the copy
        read does not hash right)."""
        sha256 = inventory.resolve_blob(self, blob)
        return b"".join(inventory.checked(inventory.open_blob(self, sha256), sha256))


def _ref(ref: str | RefSpec | None) -> RefSpec | None:
    return parse_ref(ref) if isinstance(ref, str) else ref


def open_archive(
    data_dir: str | Path | None = None,
    *,
    config: str | Path | Config | None = None,
    clock: Clock = utcnow,
) -> Archive:
    """Open the archive configured at ``config`` or in ``data_dir`` (see ``safekeeper.config``)."""
    if not isinstance(config, Config):
        config = load_config(
            Path(config) if config is not None else None,
            Path(data_dir) if data_dir is not None else None,
        )
    return Archive(config, clock=clock)

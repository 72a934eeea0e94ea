"""Ingest: bytes in, blob and ``present`` copy recorded — or nothing at all.

One pass over the input writes it to hidden storage in the target store and hashes
it (``Store.stage``). Then one write transaction records the blob, publishes the
object under its key (create-only), records the ``present`` copy and any reference.

Crash analysis (invariant 6, "present only after fully written and hashed"):

- before publish: at most a temp file in the store's ``.tmp`` area, removed once
  stale when a later process opens the store (``Archive.store``); no row, no object;
- after publish, before commit: an object with no row. The next put of the same
  bytes finds it (create-only publish reports AlreadyExists), hashes it and keeps it
  when the bytes are right (``services.copies.existing``); ``verify --adopt`` adopts the
  rest. At an ``interval`` key the number is never handed out again: it was reserved
  in a transaction committed before the object was written (``db.blob_ids``);
- after commit: the blob, its copy and its reference exist together.

An object already at the key is never taken on its name or size (invariant 11): it is
hashed, kept if right, replaced atomically with the staged bytes if wrong, refused if
it is another blob's (``services.copies.existing``). That costs a read of the existing
object, and only then: a free key (the common case) reads nothing back.

Putting bytes a location already holds (dedup) goes the same way: the recorded
``present`` copy's object is hashed before the put counts on it, and repaired from the
staged bytes if it rotted or was rewritten in place since (a put that reports the bytes
stored must not leave them stored only as bad bytes; the catalog's word is not proof).
A re-put of a stored tree thus reads back what it already holds, as ``rclone
--checksum`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from safekeeper.db.blob_ids import counts_ids_itself, take_blob_ids
from safekeeper.db.blobs import ensure_blobs
from safekeeper.db.catalog import get_location
from safekeeper.db.copies import live_states, record_present_many, was_verified_at
from safekeeper.db.models import CopyState
from safekeeper.db.refs import set_reference, set_references
from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    Conflict,
    NotFound,
    StoreError,
)
from safekeeper.ids import RefSpec
from safekeeper.services.copies.existing import Content, settle
from safekeeper.services.copies.staging import STAGING_THREADS, Staging
from safekeeper.services.copies.tree import TreeFile, display_path, file_references
from safekeeper.stores.base import (
    Source,
    Staged,
    Store,
    deferred_sync,
    fingerprint_of,
    prepare_key,
    sync_store,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from safekeeper.archive import Archive
    from safekeeper.db.models import Blob

    #: Called inside the recording transaction with the blobs by SHA-256, to add rows
    #: that must commit with the blob, copy and reference (a package's description).
    OnRecord = Callable[[Session, Mapping[str, Blob]], None]

#: Files recorded per database transaction in a tree ingest. Each batch costs a sync
#: of the store's filesystem (tens of ms when other writers share it) and a dozen
#: statements; a Ctrl-C loses at most the batch being staged.
BATCH_SIZE = 1024


@dataclass(frozen=True)
class PutOutcome:
    sha256: str
    size: int
    location: str
    #: True when this put wrote the object or adopted an unrecorded one found at its key
    #: (hashed first); False when the catalog already had it present there.
    stored: bool
    name: str | None = None
    ref: RefSpec | None = None


@dataclass(frozen=True)
class _Item:
    staged: Staged
    ref: RefSpec | None
    name: str | None


def put_stream(
    archive: Archive,
    source: Source,
    ref: RefSpec | None = None,
    location: str | None = None,
    name: str | None = None,
    on_record: OnRecord | None = None,
) -> PutOutcome:
    """Store one stream as a blob at ``location`` (default: the ingest location)."""
    target = location or archive.config.ingest_location
    with archive.store(target, fresh=True).stage(source) as staged:  # invariant 10
        return _publish(archive, target, [_Item(staged, ref, name)], on_record=on_record)[0]


def put_files(
    archive: Archive,
    files: Sequence[TreeFile],
    ref: RefSpec | None = None,
    location: str | None = None,
    *,
    key_per_file: bool = False,
    path_namespace: str | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[PutOutcome]:
    """Put many files, staging in parallel and recording in batches.

    References as ``file_references`` says. The next batch is staged by the threads
    while this one is published and recorded. Stores that can share their syncs
    (filesystem) make each batch durable with one sync instead of several fsyncs per
    file: the sync before a batch commits also covers the next batch's staged bytes
    when they were all written before it began (otherwise that batch syncs again
    before it publishes anything). When ``cancel`` is set (a first Ctrl-C), the batch
    being staged is discarded — files already being copied finish, then every staged
    temp file is removed — and ``Interrupted`` is raised; the batches recorded before
    stay recorded, nothing of the current one is. A batch already recording finishes
    first.
    """
    target = location or archive.config.ingest_location
    store = archive.store(target, fresh=True)  # invariant 10
    references = file_references(
        files, ref, key_per_file=key_per_file, path_namespace=path_namespace
    )

    content_key = not archive.uses_serial_keys(target)

    def stage(index: int) -> _Item:
        file = files[index]
        try:
            with file.path.open("rb") as source, deferred_sync(store):
                staged = store.stage(source)
                if content_key:  # the key is known now: its directories, off the main thread
                    try:
                        prepare_key(store, staged.sha256)
                    except BaseException:
                        staged.discard()
                        raise
        except OSError as exc:
            raise BadInput(f"{display_path(file.path)}: cannot read: {exc.strerror}") from exc
        except StoreError as exc:  # reading the file or writing the store: name both
            raise type(exc)(f"{display_path(file.path)}: {exc}") from exc
        return _Item(staged, references[index], display_path(file.path))

    batches = _batches(files)
    with ThreadPoolExecutor(max_workers=STAGING_THREADS) as pool:
        staging = Staging(pool, stage, next(batches, range(0)), cancel)
        durable = False  # whether a sync began after ``staging`` finished
        try:
            while staging.indices:
                items = staging.result()
                try:
                    staging = Staging(pool, stage, next(batches, range(0)), cancel)
                    if not durable:
                        sync_store(store)  # staged bytes durable before any gets a name

                    def sync_before_commit(following: Staging[_Item] = staging) -> None:
                        nonlocal durable
                        durable = following.done()  # read before the sync starts
                        sync_store(store)  # the published names durable before the rows

                    # The batch's references are set in bulk, in the recording transaction.
                    bare = [_Item(item.staged, None, item.name) for item in items]
                    with deferred_sync(store):
                        outcomes = _publish(
                            archive,
                            target,
                            bare,
                            before_commit=sync_before_commit,
                            on_record=functools.partial(_set_references, archive, items),
                        )
                finally:
                    for item in items:
                        item.staged.discard()
                for item, outcome in zip(items, outcomes, strict=True):
                    yield dataclasses.replace(outcome, ref=item.ref)
        finally:
            staging.abandon()


#: A batch closes at ``BATCH_SIZE`` files or once it holds this many bytes.
BATCH_BYTES = 256 * 1024 * 1024


def _batches(files: Sequence[TreeFile]) -> Iterator[range]:
    """Consecutive ranges of ``files``: at most ``BATCH_SIZE`` files each, and no more
    bytes than ``BATCH_BYTES`` unless one file alone is larger."""
    start = 0
    size = 0
    for index, file in enumerate(files):
        if index > start and (index - start >= BATCH_SIZE or size + file.size > BATCH_BYTES):
            yield range(start, index)
            start, size = index, 0
        size += file.size
    if start < len(files):
        yield range(start, len(files))


def _set_references(
    archive: Archive, items: Sequence[_Item], session: Session, blobs: Mapping[str, Blob]
) -> None:
    """``set_references`` per namespace for a batch: a few statements, not several per
    file (a 10,000-file put would otherwise spend most of its time here)."""
    by_namespace: dict[str, dict[tuple[str, str], Blob]] = {}
    for item in items:
        if item.ref is not None:
            targets = by_namespace.setdefault(item.ref.namespace, {})
            targets[(item.ref.key, item.ref.label)] = blobs[item.staged.sha256]
    now = archive.clock()
    for namespace, targets in by_namespace.items():
        set_references(session, namespace, targets, now)


def _publish(
    archive: Archive,
    location_name: str,
    items: Sequence[_Item],
    before_commit: Callable[[], None] | None = None,
    on_record: OnRecord | None = None,
) -> list[PutOutcome]:
    """Record staged items in one transaction, publishing the objects not yet held.

    A handful of statements per batch, whatever its size. ``before_commit`` runs
    after every object is published and before the transaction commits.
    """
    serials = reserve_serials(archive, location_name, len({i.staged.sha256 for i in items}))
    now = archive.clock()
    with archive.db.write() as session:
        blobs, stored = record_staged(
            archive, session, location_name, [item.staged for item in items], now, serials
        )
        outcomes: list[PutOutcome] = []
        for item, wrote in zip(items, stored, strict=True):
            blob = blobs[item.staged.sha256]
            outcomes.append(
                PutOutcome(blob.sha256, blob.size, location_name, wrote, item.name, item.ref)
            )
            if item.ref is not None:
                set_reference(session, item.ref, blob, now)
        if on_record is not None:
            on_record(session, blobs)
        if before_commit is not None:
            before_commit()
    return outcomes


def _publish_object(
    store: Store,
    staged: Staged,
    key: str,
    *,
    content_key: bool,
    held_before: Callable[[], bool],
    held: bool = False,
) -> bool:
    """Publish under ``key``, create-only; True if this wrote the object. An object
    already there is hashed first (see module doc and ``services.copies.existing``).
    ``held``: the location's copy is recorded ``present``, so the object is hashed
    first (one read; on S3 a GET, not an upload the server would refuse), and the
    staged bytes are written only if it is wrong or gone."""
    if not held:
        try:
            staged.commit(key)
            return True
        except AlreadyExists:
            pass
    try:
        return settle(
            store,
            key,
            Content(staged.sha256, staged.size),
            content_key=content_key,
            held_before=held_before,
            replace=lambda: staged.replace(key),
        )
    except NotFound:
        if held:
            return _publish_object(
                store, staged, key, content_key=content_key, held_before=held_before
            )
        raise Conflict(f"object {key} appeared and vanished during the put; retry") from None


def reserve_serials(archive: Archive, location_name: str, count: int) -> Iterator[int] | None:
    """For a put into an ``interval`` location on SQLite: ``count`` blob ids taken in a
    transaction of their own, committed before any object is written under them, so a
    rollback or a kill of the put cannot hand them out again (``db.blob_ids``). Numbers
    the put does not use (blobs that exist already) are skipped for good."""
    if count == 0 or not archive.uses_serial_keys(location_name):
        return None
    if archive.db.dialect == "postgresql":
        return None  # its sequence never hands a number out twice (db.blob_ids)
    with archive.db.write() as session:
        return iter(take_blob_ids(session, count))


def record_staged(
    archive: Archive,
    session: Session,
    location_name: str,
    staged: Sequence[Staged],
    now: datetime,
    serials: Iterator[int] | None = None,
) -> tuple[dict[str, Blob], list[bool]]:
    """Inside the caller's transaction: record the staged blobs, publish the objects the
    location does not hold yet and record their ``present`` copies. Returns the blob rows
    by sha256, and for each of ``staged`` whether this call made it present there —
    written, repaired, or an object an interrupted put published but never recorded,
    adopted (False: the location held it already with the right bytes, or it came
    earlier in ``staged``).

    Same crash analysis as ``_publish`` (module doc): an object published before a
    rollback is kept by the next put of those bytes (after hashing it) or adopted by
    ``verify --adopt``. For an ``interval`` location on SQLite, ``serials`` are the
    blob ids reserved beforehand by ``reserve_serials``.
    """
    store = archive.store(location_name)
    location = get_location(session, location_name)
    content_key = not archive.uses_serial_keys(location_name)
    if not content_key and serials is None and not counts_ids_itself(session):
        raise Conflict(f"a put into {location_name} needs blob ids reserved beforehand")
    blobs = ensure_blobs(session, {s.sha256: s.size for s in staged}, now, serials)
    states = live_states(session, [b.id for b in blobs.values()], location.id)
    newly_present: list[int] = []
    fingerprints: dict[int, str | None] = {}
    stored: list[bool] = []
    done: set[int] = set()
    for item in staged:
        blob = blobs[item.sha256]
        state = states.get(blob.id)
        if state == CopyState.DELETING:
            raise Conflict(
                f"blob {blob.sha256} is being deleted from {location_name} right now; "
                "retry when that finishes"
            )
        if blob.id in done:  # a duplicate earlier in ``staged`` settled it
            stored.append(False)
            continue
        done.add(blob.id)
        # A recorded ``present`` copy is not taken on the catalog's word either: its
        # object may have rotted or been rewritten in place since it was hashed, and
        # this put holds the good bytes (module doc).
        key = archive.key_for(location_name, blob.sha256, blob.id)
        written = _publish_object(
            store,
            item,
            key,
            content_key=content_key,
            held_before=partial(was_verified_at, session, blob.id, location.id),
            held=state == CopyState.PRESENT,
        )
        if written:
            fingerprints[blob.id] = fingerprint_of(store, key)
        if written or state != CopyState.PRESENT:
            # written, repaired, or an unrecorded object adopted: recorded afresh
            newly_present.append(blob.id)
        stored.append(written or state != CopyState.PRESENT)
    record_present_many(session, newly_present, location.id, now, fingerprints)
    return blobs, stored

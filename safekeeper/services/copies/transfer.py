"""The transfer task: copy a blob into a ``pending`` copy's location, verified.

The bytes stream from a source store into the target store's create-only ``put``,
which hashes exactly what it wrote. The copy becomes ``present`` (with
``verified_at``) only if that hash and size equal the blob's. On a mismatch the
target object is removed and the attempt counts as a transient failure: the next
attempt may read from another source.

A target key already taken is settled by ``services.copies.existing``: the object there is
hashed and kept only if its bytes are right, replaced atomically (never deleted
first) if they are wrong, and never touched if it is another blob's — an ``interval``
key this blob never held — which fails the transfer for good (PermanentStoreError).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, bindparam, case, select, update
from sqlalchemy.orm import Session

from safekeeper.db.copies import transition, was_verified_at
from safekeeper.db.models import Blob, Copy, CopyState, Location
from safekeeper.engine import watchdog
from safekeeper.engine.types import Completion, TaskInfo
from safekeeper.errors import (
    AlreadyExists,
    Cancelled,
    NotFound,
    PermanentStoreError,
    TransientStoreError,
)
from safekeeper.services.copies.existing import Content, ForeignObject, settle
from safekeeper.stores.base import Store, fingerprint_of

if TYPE_CHECKING:
    from safekeeper.archive import Archive


#: Ids per ``IN (...)`` list: well under every database's bound-parameter limit.
_IN_CHUNK = 500


def _nothing(session: Session, now: datetime) -> None:
    return None


@dataclass(frozen=True)
class CopyPresent:
    """A transfer's result: its copy, still ``pending``, becomes ``present`` and
    verified now, with the fingerprint of the object written. The runner records the
    completions of a batch together (``record_many``: one statement, many rows)."""

    copy_id: int
    fingerprint: str | None

    def __call__(self, session: Session, now: datetime) -> None:
        self.record_many(session, [self], now)

    @classmethod
    def record_many(cls, session: Session, items: Sequence[CopyPresent], now: datetime) -> None:
        # Conditional on ``pending`` like ``copies.transition``: a copy another process
        # moved meanwhile (a cancel made it ``failed``) is left as it is.
        copies = cast(Table, Copy.__table__)
        session.execute(
            update(copies)
            .where(copies.c.id == bindparam("cid"), copies.c.state == CopyState.PENDING)
            .values(
                state=CopyState.PRESENT,
                updated_at=now,
                verified_at=now,
                fingerprint=bindparam("fp"),
                last_error=None,
            ),
            [{"cid": item.copy_id, "fp": item.fingerprint} for item in items],
        )


@dataclass(frozen=True)
class _Place:
    """Where the copy goes, what may be done to an object already there, and the
    runner's signal that the task was cancelled."""

    store: Store
    key: str
    content_key: bool
    held_before: Callable[[], bool]
    stop: threading.Event


def _read(source: Store, key: str, stop: threading.Event) -> Iterator[bytes]:
    """The source object's chunks, until the task is cancelled: then the exception ends
    the target's put, which keeps nothing of an unfinished write."""
    chunks = source.open(key)
    try:
        for chunk in chunks:
            if stop.is_set():
                raise Cancelled(f"cancelled while copying {key!r}")
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # release the source (a file, a connection) now, not at GC
            close()


def _held_before(archive: Archive, blob_id: int, location_id: int) -> bool:
    with archive.db.read() as session:
        return was_verified_at(session, blob_id, location_id)


def _replace(source: Store, source_key: str, place: _Place) -> None:
    place.store.replace(place.key, watchdog.tracked(_read(source, source_key, place.stop)))


@dataclass(frozen=True)
class _Blob:
    id: int
    sha256: str
    size: int


class _FreshStores:
    """The target stores of one batch of transfers, their identity checked once per
    batch (invariant 10: fresh checks are per batch, never per copy). A failed check
    is not remembered: the next transfer to that location checks again."""

    def __init__(self) -> None:
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def store(self, archive: Archive, location: str) -> Store:
        with self._lock:
            checked = location in self._checked
        store = archive.store(location, fresh=not checked)
        with self._lock:
            self._checked.add(location)
        return store


@dataclass(frozen=True)
class _Prepared:
    """What ``Transfer.prepare`` read for one task: its target copy's state, location
    and blob, the present copies to read from (the task's own source first), and the
    batch's identity checks."""

    state: str
    location_id: int
    location: str
    blob: _Blob
    sources: list[tuple[int, str]]
    stores: _FreshStores


class Transfer:
    #: Every chunk read from a source (and hashed at the target) is reported.
    reports_progress = True

    def prepare(self, archive: Archive, tasks: Sequence[TaskInfo]) -> dict[int, object]:
        """Read every task's target and sources in two queries for the whole batch."""
        by_copy = {task.copy_id: task for task in tasks}
        with archive.db.read() as session:
            targets = session.execute(
                select(
                    Copy.id,
                    Copy.state,
                    Copy.location_id,
                    Location.name,
                    Blob.id,
                    Blob.sha256,
                    Blob.size,
                )
                .join(Location, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.id.in_(list(by_copy)))
            ).all()
            present: dict[int, list[tuple[int, int, str]]] = {}
            blob_ids = sorted({row[4] for row in targets})
            for start in range(0, len(blob_ids), _IN_CHUNK):
                for copy_id, blob_id, location_id, name in session.execute(
                    select(Copy.id, Copy.blob_id, Copy.location_id, Location.name)
                    .join(Location, Copy.location_id == Location.id)
                    .where(
                        Copy.blob_id.in_(blob_ids[start : start + _IN_CHUNK]),
                        Copy.state == CopyState.PRESENT,
                    )
                    .order_by(Copy.id)
                ):
                    present.setdefault(blob_id, []).append((copy_id, location_id, name))
        stores = _FreshStores()
        prepared: dict[int, object] = {}
        for copy_id, state, location_id, name, blob_id, sha256, size in targets:
            task = by_copy[copy_id]
            # The same order as one task's own query: its source first, then by id.
            sources = sorted(
                ((c, n) for c, loc, n in present.get(blob_id, []) if loc != location_id),
                key=lambda source: (source[0] != task.source_copy_id, source[0]),
            )
            blob = _Blob(blob_id, sha256, size)
            prepared[task.id] = _Prepared(state, location_id, name, blob, sources, stores)
        return prepared

    def _read_target(self, archive: Archive, task: TaskInfo) -> _Prepared:
        """One task's ``_Prepared``, read on its own (a task run outside a batch)."""
        with archive.db.read() as session:
            target = session.execute(
                select(Copy.state, Copy.location_id, Location.name, Blob.id, Blob.sha256, Blob.size)
                .join(Location, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.id == task.copy_id)
            ).one()
            sources = session.execute(
                select(Copy.id, Location.name)
                .join(Location, Copy.location_id == Location.id)
                .where(
                    Copy.blob_id == target.id,
                    Copy.state == CopyState.PRESENT,
                    Copy.location_id != target.location_id,
                )
                .order_by(case((Copy.id == task.source_copy_id, 0), else_=1), Copy.id)
            ).all()
        blob = _Blob(target.id, target.sha256, target.size)
        return _Prepared(
            target.state,
            target.location_id,
            target.name,
            blob,
            [(c, n) for c, n in sources],
            _FreshStores(),
        )

    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        prepared = task.prepared
        if not isinstance(prepared, _Prepared):
            prepared = self._read_target(archive, task)
        if prepared.state != CopyState.PENDING:
            return _nothing  # already done by an earlier attempt: idempotent
        blob = prepared.blob
        target_location = prepared.location
        watchdog.describe(f"blob {blob.sha256} to location {target_location}")
        sources = prepared.sources
        unknown = [
            n
            for n in [target_location, *(n for _, n in sources)]
            if n not in archive.config.locations
        ]
        if target_location in unknown or (sources and len(unknown) == len(sources)):
            # A task made by a process with a newer configuration: not a permanent
            # failure, but this worker's to catch up with (see docs/deploy.md).
            raise TransientStoreError(
                f"location(s) {', '.join(sorted(set(unknown)))} not in this worker's "
                f"configuration ({archive.config_origin}): restart it with the current one"
            )
        usable = [name for _, name in sources if name in archive.config.locations]
        if not usable:
            raise PermanentStoreError(f"no present copy of {blob.sha256} to transfer from")
        target_store = prepared.stores.store(archive, target_location)  # invariant 10
        target_key = archive.key_for(target_location, blob.sha256, blob.id)
        location_id = prepared.location_id
        place = _Place(
            target_store,
            target_key,
            content_key=not archive.uses_serial_keys(target_location),
            held_before=lambda: _held_before(archive, blob.id, location_id),
            stop=task.stop,
        )
        problems: list[str] = []
        for source_location in usable:
            source_store = archive.store(source_location)
            source_key = archive.key_for(source_location, blob.sha256, blob.id)
            try:
                self._copy(source_store, source_key, place, blob)
            except NotFound:
                problems.append(f"{source_location}: object missing")
                continue
            except TransientStoreError as exc:
                problems.append(f"{source_location}: {exc}")
                continue
            return self._completion(task.copy_id, fingerprint_of(target_store, target_key))
        raise TransientStoreError(f"transfer of {blob.sha256} failed: " + "; ".join(problems))

    @staticmethod
    def _copy(source: Store, source_key: str, place: _Place, blob: _Blob) -> None:
        target, target_key = place.store, place.key
        try:
            chunks = watchdog.tracked(_read(source, source_key, place.stop))
            result = target.put(target_key, chunks)
        except AlreadyExists:
            # Written by an earlier attempt that died before recording it, left by a
            # crashed writer, put back by someone — or wrong bytes: hashed, never taken
            # on its size (services.copies.existing).
            try:
                settle(
                    target,
                    target_key,
                    Content(blob.sha256, blob.size),
                    content_key=place.content_key,
                    held_before=place.held_before,
                    replace=lambda: _replace(source, source_key, place),
                )
            except ForeignObject as exc:
                raise PermanentStoreError(str(exc)) from exc
            return
        if (result.sha256, result.size) != (blob.sha256, blob.size):
            target.delete([target_key])  # the object this put created, nobody else's
            raise TransientStoreError(
                f"checksum mismatch writing {blob.sha256}: target got {result.size} bytes "
                f"hashing to {result.sha256}"
            )

    @staticmethod
    def _completion(copy_id: int, fingerprint: str | None) -> Completion:
        return CopyPresent(copy_id, fingerprint)

    def failed(
        self, session: Session, task: TaskInfo, error: str, final: bool, now: datetime
    ) -> None:
        session.execute(
            update(Copy)
            .where(Copy.id == task.copy_id)
            .values(retries=Copy.retries + 1, last_error=error, updated_at=now)
        )
        if final:
            transition(session, task.copy_id, CopyState.PENDING, CopyState.FAILED, now)

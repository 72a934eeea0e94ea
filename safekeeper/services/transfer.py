"""The transfer task: copy a blob into a ``pending`` copy's location, verified.

The bytes stream from a source store into the target store's create-only ``put``,
which hashes exactly what it wrote. The copy becomes ``present`` (with
``verified_at``) only if that hash and size equal the blob's. On a mismatch the
target object is removed and the attempt counts as a transient failure: the next
attempt may read from another source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from safekeeper.db.copies import transition
from safekeeper.db.models import Blob, Copy, CopyState, Location
from safekeeper.engine.types import Completion, TaskInfo
from safekeeper.errors import AlreadyExists, NotFound, PermanentStoreError, TransientStoreError
from safekeeper.stores.base import HashingCounter, Store

if TYPE_CHECKING:
    from safekeeper.archive import Archive


def _nothing(session: Session, now: datetime) -> None:
    return None


def hash_object(store: Store, key: str) -> tuple[str, int]:
    counter = HashingCounter()
    for chunk in store.open(key):
        counter.update(chunk)
    return counter.sha256, counter.size


@dataclass(frozen=True)
class _Blob:
    id: int
    sha256: str
    size: int


class Transfer:
    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        # Two plain-column queries: this runs once per transfer, thousands of times.
        with archive.db.read() as session:
            target = session.execute(
                select(Copy.state, Copy.location_id, Location.name, Blob.id, Blob.sha256, Blob.size)
                .join(Location, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.id == task.copy_id)
            ).one()
            if target.state != CopyState.PENDING:
                return _nothing  # already done by an earlier attempt: idempotent
            blob = _Blob(target.id, target.sha256, target.size)
            target_location = target.name
            sources = session.execute(
                select(Copy.id, Location.name)
                .join(Location, Copy.location_id == Location.id)
                .where(
                    Copy.blob_id == blob.id,
                    Copy.state == CopyState.PRESENT,
                    Copy.location_id != target.location_id,
                )
                .order_by(case((Copy.id == task.source_copy_id, 0), else_=1), Copy.id)
            ).all()
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
        target_store = archive.store(target_location)
        target_key = archive.key_for(target_location, blob.sha256, blob.id)
        problems: list[str] = []
        for source_location in usable:
            source_store = archive.store(source_location)
            source_key = archive.key_for(source_location, blob.sha256, blob.id)
            try:
                self._copy(source_store, source_key, target_store, target_key, blob)
            except NotFound:
                problems.append(f"{source_location}: object missing")
                continue
            except TransientStoreError as exc:
                problems.append(f"{source_location}: {exc}")
                continue
            return self._completion(task.copy_id)
        raise TransientStoreError(f"transfer of {blob.sha256} failed: " + "; ".join(problems))

    @staticmethod
    def _copy(source: Store, source_key: str, target: Store, target_key: str, blob: _Blob) -> None:
        try:
            result = target.put(target_key, source.open(source_key))
            written = (result.sha256, result.size)
        except AlreadyExists:
            # Written by an earlier attempt that died before recording it, or left by
            # a crashed writer: keep it if it is right, else replace it.
            written = hash_object(target, target_key)
            if written != (blob.sha256, blob.size):
                target.delete([target_key])
                result = target.put(target_key, source.open(source_key))
                written = (result.sha256, result.size)
        if written != (blob.sha256, blob.size):
            target.delete([target_key])
            raise TransientStoreError(
                f"checksum mismatch writing {blob.sha256}: target got {written[1]} bytes "
                f"hashing to {written[0]}"
            )

    @staticmethod
    def _completion(copy_id: int) -> Completion:
        def complete(session: Session, now: datetime) -> None:
            transition(
                session,
                copy_id,
                CopyState.PENDING,
                CopyState.PRESENT,
                now,
                verified_at=now,
                last_error=None,
            )

        return complete

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

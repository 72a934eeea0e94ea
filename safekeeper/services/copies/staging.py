"""The threads of a tree put: each batch's files copied and hashed into the store's
temp area by a pool (``Staging``) while the main thread publishes and records the
batch before (``services.copies.ingest``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from safekeeper.errors import Interrupted
from safekeeper.stores.base import Staged

STAGING_THREADS = 4


class HasStaged(Protocol):
    @property
    def staged(self) -> Staged: ...


ItemT = TypeVar("ItemT", bound=HasStaged)


#: Files per task handed to a staging thread: one future per file cost more than the
#: copy of a small file.
STAGE_CHUNK = 32


class Staging(Generic[ItemT]):
    """One batch being staged by the pool, in chunks of ``STAGE_CHUNK`` files."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        stage: Callable[[int], ItemT],
        indices: range,
        cancel: threading.Event | None = None,
    ) -> None:
        self.indices = indices
        self._cancel = cancel
        self._stop = threading.Event()  # a chunk failed or the batch was abandoned
        self._futures = [
            pool.submit(self._stage_chunk, stage, indices[start : start + STAGE_CHUNK])
            for start in range(0, len(indices), STAGE_CHUNK)
        ]

    def _stopped(self) -> bool:
        return self._stop.is_set() or (self._cancel is not None and self._cancel.is_set())

    def _stage_chunk(self, stage: Callable[[int], ItemT], chunk: range) -> list[ItemT]:
        items: list[ItemT] = []
        try:
            for index in chunk:
                if self._stopped():
                    break  # not started: nothing to clean up
                items.append(stage(index))
        except BaseException:
            self._stop.set()
            for item in items:
                item.staged.discard()
            raise
        return items

    def done(self) -> bool:
        return all(future.done() for future in self._futures)

    def result(self) -> list[ItemT]:
        """The staged items in order; if a file failed or ``cancel`` is set, every
        staged file of the batch is discarded before raising (files not started yet
        are never started)."""
        items: list[ItemT] = []
        error: BaseException | None = None
        futures, self._futures = self._futures, []  # from here the items are the caller's
        for future in futures:
            try:
                items.extend(future.result())
            except BaseException as exc:  # noqa: BLE001 - collected, cleaned up, re-raised
                error = error or exc
                self._stop.set()
        if error is None and self._stopped():
            error = Interrupted("interrupted")
        if error is not None:
            for item in items:
                item.staged.discard()
            raise error
        return items

    def abandon(self) -> None:
        """Stop staging and remove whatever was staged; nothing to do after ``result``
        (the items then belong to the caller)."""
        self._stop.set()
        for future in self._futures:
            future.cancel()
        for future in self._futures:
            if future.cancelled():
                continue
            try:
                staged = future.result()
            except BaseException:  # noqa: BLE001 - the chunk removed its own files
                continue
            for item in staged:
                item.staged.discard()
        self._futures = []

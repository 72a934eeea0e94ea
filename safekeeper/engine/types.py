"""What a task handler is: the contract between the runner and the services."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from safekeeper.archive import Archive
    from safekeeper.db.models import Task
    from safekeeper.db.tasks import Claimed

Completion = Callable[[Session, datetime], None]


class BulkCompletion(Protocol):
    """A completion the runner may record together with others of its type, in one
    set-based statement per batch (``record_many``) instead of one call each."""

    def __call__(self, session: Session, now: datetime, /) -> None: ...

    @classmethod
    def record_many(cls, session: Session, items: Sequence[Any], now: datetime) -> None: ...


@dataclass(frozen=True)
class TaskInfo:
    """A snapshot of the claimed task row handed to handlers."""

    id: int
    kind: str
    site: str
    copy_id: int
    source_copy_id: int | None
    attempts: int
    max_attempts: int
    payload: str | None = None
    #: What the handler's ``prepare`` read for the whole batch about this task (None:
    #: the handler reads it itself). Saves a database round-trip per task.
    prepared: object = field(default=None, compare=False, repr=False)
    #: Set by the runner's heartbeat when this worker no longer holds the claim (the
    #: task was cancelled, or taken over): a long handler checks it between chunks and
    #: stops, since nothing it does would be recorded.
    stop: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    @classmethod
    def of(cls, row: Task | Claimed) -> TaskInfo:
        return cls(
            row.id,
            row.kind,
            row.site,
            row.copy_id,
            row.source_copy_id,
            row.attempts,
            row.max_attempts,
            row.payload,
        )


class Handler(Protocol):
    #: True when ``execute`` reports its progress (``engine.watchdog``): only then does
    #: a silence of ``tasks.stall_timeout`` mean its thread is stuck.
    reports_progress: bool

    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        """Do the work; raise TransientStoreError to retry, anything else to fail."""
        ...

    def failed(
        self, session: Session, task: TaskInfo, error: str, final: bool, now: datetime
    ) -> None:
        """Record a failed attempt on the subject (``final``: no retries left)."""
        ...


@runtime_checkable
class Preparing(Protocol):
    """A handler that reads what a whole batch of its tasks needs in one go."""

    def prepare(self, archive: Archive, tasks: Sequence[TaskInfo]) -> dict[int, object]:
        """Per task id, the ``TaskInfo.prepared`` its ``execute`` will find."""
        ...

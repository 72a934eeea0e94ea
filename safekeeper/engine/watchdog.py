"""Progress of running tasks, so a worker thread that is stuck can be told apart from
one that is slow.

The heartbeat proves that the worker *process* lives, not that a task in it moves: a
thread blocked on a dead NFS mount or a socket that never answers keeps its claim
fresh forever. So the handler reports progress (every chunk of bytes read, through
``tracked``) into the ``Progress`` of the task its thread runs, and the runner's
heartbeat thread fails the attempt of a task that made none for
``tasks.stall_timeout`` (see ``engine.runner``). The stuck thread is told too: the
next chunk it asks for raises ``TaskStalled``, which unwinds the write (an S3
multipart upload is aborted, a temp file removed) instead of finishing a task that
another worker now owns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

#: ``last_error`` of an attempt the watchdog stopped (``safekeeper status`` counts these).
STALLED_PREFIX = "stalled:"


class TaskStalled(BaseException):
    """Raised in a task's own thread once the watchdog gave its attempt up.

    A BaseException, like ``asyncio.CancelledError``: no ``except Exception`` on the
    way (a store's error mapping, a transfer's try-the-next-source) may take it for an
    ordinary failure and carry on with the task.
    """


class Progress:
    """One running task: when its thread last moved bytes, and what it works on."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        self.subject = "subject not known yet"
        self.bytes = 0
        #: Set by the task's thread when its handler starts, and when it returned (or
        #: raised).
        self.started = False
        self.finished = False
        self._last = time.monotonic()
        self._stalled: str | None = None
        self._lock = threading.Lock()

    def describe(self, subject: str) -> None:
        """Name what the task works on, for the log line should it stall."""
        self.subject = subject
        self.advance(0)

    def start(self) -> None:
        """The task's thread starts its handler: the time it waited for a thread (or
        for the tasks before it in its batch) is not its silence."""
        self.started = True
        self.advance(0)

    def advance(self, size: int) -> None:
        """Record ``size`` bytes moved; raise TaskStalled once the attempt was given up."""
        with self._lock:
            if self._stalled is not None:
                raise TaskStalled(self._stalled)
            self.bytes += size
            self._last = time.monotonic()

    def idle_seconds(self) -> float:
        with self._lock:
            return time.monotonic() - self._last

    def give_up(self, reason: str) -> bool:
        """Mark the attempt given up; False if it already was."""
        with self._lock:
            if self._stalled is not None:
                return False
            self._stalled = reason
            return True

    @property
    def stalled(self) -> bool:
        with self._lock:
            return self._stalled is not None


_current: ContextVar[Progress | None] = ContextVar("safekeeper_task_progress", default=None)


def current() -> Progress | None:
    """The progress of the task this thread runs (None outside the runner)."""
    return _current.get()


def running(progress: Progress) -> object:
    """Make ``progress`` the current thread's until ``finished(token)``."""
    return _current.set(progress)


def finished(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def describe(subject: str) -> None:
    progress = _current.get()
    if progress is not None:
        progress.describe(subject)


def tracked(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks``, reporting each to the current task's progress (if any)."""
    progress = _current.get()
    if progress is None:
        yield from chunks
        return
    progress.advance(0)  # given up while it opened the source: stop before reading
    for chunk in chunks:
        progress.advance(len(chunk))
        yield chunk

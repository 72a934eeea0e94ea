"""Every task kind and the handler that runs it."""

from __future__ import annotations

from safekeeper.engine.types import Handler
from safekeeper.services.gc_queue import GcBatch
from safekeeper.services.transfer import Transfer

HANDLERS: dict[str, Handler] = {
    "transfer": Transfer(),
    "gc": GcBatch(),
}

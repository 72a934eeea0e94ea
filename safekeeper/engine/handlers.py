"""Every task kind and the handler that runs it."""

from __future__ import annotations

from safekeeper.engine.types import Handler
from safekeeper.services.copies.transfer import Transfer
from safekeeper.services.deletion.gc_queue import GcBatch

HANDLERS: dict[str, Handler] = {
    "transfer": Transfer(),
    "gc": GcBatch(),
}

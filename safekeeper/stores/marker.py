"""The identity marker every store carries: who the store is, written once.

The marker is a small JSON object stored beside the objects under ``MARKER_NAME``,
a name no object key can take (keys never start with ``.``), so listings, usage and
orphan scans never see it::

    {"format": 1, "uuid": "4f0c…", "location": "archive", "created_at": "2026-…"}

``uuid`` is the identity; the catalog records it for the location that owns the store
(``locations.store_uuid``). ``location`` and ``created_at`` only help a human who
finds the file. The rules built on it are in ``safekeeper.services.copies.identity``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from safekeeper.errors import PermanentStoreError

#: Where the marker lives in every store: a file in a filesystem store's root, an
#: object under an S3 store's prefix, a slot of a memory store.
MARKER_NAME = ".safekeeper-store"
MARKER_FORMAT = 1
#: A marker larger than this is not one of ours.
MAX_MARKER_SIZE = 4096


@dataclass(frozen=True)
class StoreMarker:
    uuid: str
    location: str = ""
    format: int = MARKER_FORMAT

    @classmethod
    def new(cls, location: str) -> StoreMarker:
        return cls(uuid=str(uuid.uuid4()), location=location)

    def encode(self) -> bytes:
        document = {
            "format": self.format,
            "uuid": self.uuid,
            "location": self.location,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return (json.dumps(document, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> StoreMarker:
        """The marker in ``data``; PermanentStoreError naming ``where`` if it is not one."""
        try:
            document = json.loads(data[: MAX_MARKER_SIZE + 1].decode())
            ident = str(uuid.UUID(str(document["uuid"])))
            fmt = int(document["format"])
            location = str(document.get("location", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PermanentStoreError(
                f"{where}: {MARKER_NAME} is not a safekeeper store marker ({exc})"
            ) from exc
        if len(data) > MAX_MARKER_SIZE or fmt != MARKER_FORMAT:
            raise PermanentStoreError(
                f"{where}: {MARKER_NAME} has format {fmt}, this safekeeper reads {MARKER_FORMAT}"
            )
        return cls(uuid=ident, location=location, format=fmt)

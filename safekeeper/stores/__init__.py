"""Store backends and ``open_store``, which picks one by URL scheme.

``memory://NAME``            objects in this process (same NAME, same objects)
``file:///abs/path``         a directory; options: ``layout`` (fanout|flat|interval),
                             ``interval_size`` (interval layout only)
``s3://bucket/prefix``       an S3-compatible bucket via obstore; options: ``endpoint``,
                             ``region``, ``access_key_id``, ``secret_access_key``,
                             ``allow_http`` (defaults come from the AWS_* environment)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safekeeper.errors import BadInput
from safekeeper.stores.base import ObjectInfo, PutResult, Staged, Store, Usage

__all__ = ["ObjectInfo", "PutResult", "Staged", "Store", "Usage", "open_store"]


def open_store(url: str, options: Mapping[str, Any] | None = None) -> Store:
    """Open the store at ``url``; raise BadInput for an unknown scheme or bad option."""
    opts = dict(options or {})
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        from safekeeper.stores.memory import MemoryStore

        return MemoryStore.from_url(url, **opts)
    if scheme == "file":
        from safekeeper.stores.filesystem import FileStore

        return FileStore.from_url(url, **opts)
    if scheme == "s3":
        from safekeeper.stores.s3 import S3Store

        return S3Store.from_url(url, **opts)
    raise BadInput(f"unknown store URL {url!r}: expected memory://, file:// or s3://")

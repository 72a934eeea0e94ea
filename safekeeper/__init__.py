"""safekeeper: track every copy of every file; replicate by policy; delete only when safe."""

from typing import TYPE_CHECKING

from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    ConfigError,
    Conflict,
    NotFound,
    PermanentStoreError,
    PolicyDenied,
    SafekeeperError,
    TransientStoreError,
)

if TYPE_CHECKING:
    from safekeeper.archive import Archive, open_archive

__version__ = "0.1.0"

#: Imported on first use: ``import safekeeper.cli`` (and so every command's start-up)
#: must not pay for the database and the stores (see safekeeper/cli/__init__.py).
_LAZY = {"Archive": "safekeeper.archive", "open_archive": "safekeeper.archive"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlreadyExists",
    "Archive",
    "BadInput",
    "ConfigError",
    "Conflict",
    "NotFound",
    "PermanentStoreError",
    "PolicyDenied",
    "SafekeeperError",
    "TransientStoreError",
    "open_archive",
]

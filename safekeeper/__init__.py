"""safekeeper: track every copy of every file; replicate by policy; delete only when safe."""

from safekeeper.archive import Archive, open_archive
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

__version__ = "0.1.0"

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

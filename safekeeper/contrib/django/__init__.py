"""Django adapters (the ``safekeeper[django]`` extra).

- ``SafekeeperStorage``: a file storage whose files are safekeeper blobs and references
  (``STORAGES["default"]`` or per field).
- ``safekeeper.contrib.django.sessions``: a session engine that ends a user's sessions
  on every path that removes or deactivates them, and re-checks the user on use.

Add ``"safekeeper.contrib.django"`` to ``INSTALLED_APPS`` for the session engine (its
table, signal handlers and the ``safekeeper_sessions`` command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safekeeper.contrib.django.storage import SafekeeperStorage

__all__ = ["SafekeeperStorage"]


def __getattr__(name: str) -> Any:
    # Lazy, so that Django can import this package (INSTALLED_APPS) before settings load.
    if name == "SafekeeperStorage":
        from safekeeper.contrib.django.storage import SafekeeperStorage

        return SafekeeperStorage
    raise AttributeError(name)

"""Test helpers shipped with safekeeper, for its own tests and third-party backends.

``StoreConformance`` (in ``safekeeper.testing.conformance``) is the pytest suite
every Store backend must pass. Importing it needs pytest.
"""

from __future__ import annotations

from safekeeper.testing.conformance import StoreConformance

__all__ = ["StoreConformance"]

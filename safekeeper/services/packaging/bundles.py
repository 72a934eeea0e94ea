"""Bundles: a namespace's references, package metadata and blobs in one tar stream
(``docs/bundle-format.md``). Export lives in ``bundle_export``, import in
``bundle_import``, the format both share in ``bundle_format``; this module is the
one name the CLI, the HTTP API and the dashboard use for them.
"""

from __future__ import annotations

from safekeeper.services.packaging.bundle_export import ExportOutcome, export_namespace
from safekeeper.services.packaging.bundle_format import Progress
from safekeeper.services.packaging.bundle_import import ImportOutcome, import_bundle

__all__ = ["ExportOutcome", "ImportOutcome", "Progress", "export_namespace", "import_bundle"]

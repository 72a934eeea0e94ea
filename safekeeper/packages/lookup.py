"""What a package URL points at: the zip blob, what it is, and the member path.

Serving answers thousands of requests a second for the same few packages, so the
answers are kept in memory for ``ttl`` seconds: a package row never changes for its
blob, and a reference that moves is seen moved within the TTL (reference URLs are
served ``no-cache``, so browsers revalidate and pick up the move).

Who may see what is remembered the same way, per tenant: a non-admin sees a namespace
of their tenant, and a blob that such a namespace references (the rules of
``services.access.tenancy`` and ``services.access.tenant_data``); admins see everything and need no
lookup. A reference removed or a namespace handed to another tenant stops being
served within the TTL. Only the answer about content is remembered here, never who
the caller is: the session or token is checked on every request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy import and_, exists, or_, select

from safekeeper.api.principal import Principal
from safekeeper.db.models import Blob, Namespace, Package, Reference
from safekeeper.services.access.tenancy import visible_namespace_filter

if TYPE_CHECKING:
    from safekeeper.archive import Archive

#: Splits of ``key/label/path`` tried for one reference URL: keys deeper than this
#: many segments are not reachable by URL (keeps one request to one bounded query).
MAX_KEY_SEGMENTS = 32
#: Entries kept per table before the oldest half is dropped.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class PackageInfo:
    sha256: str
    kind: str
    #: The launch page: an exact member path.
    entry: str
    title: str | None
    created_at: datetime


@dataclass(frozen=True)
class ReferenceTarget:
    """A reference URL's parts: the package it names and the member path after it."""

    key: str
    label: str
    path: str
    package: PackageInfo | None


K = TypeVar("K")
V = TypeVar("V")


class _Memo(Generic[K, V]):
    """A small TTL map; ``get`` says whether it had a fresh answer."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        found = self._entries.get(key)
        if found is None or time.monotonic() - found[0] > self.ttl:
            return False, None
        return True, found[1]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                for old in list(self._entries)[: MAX_ENTRIES // 2]:
                    del self._entries[old]
            self._entries[key] = (time.monotonic(), value)


class PackageLookup:
    """Blob and reference URL resolution for one archive, with a short memory."""

    def __init__(self, archive: Archive, ttl: float = 1.0) -> None:
        self.archive = archive
        self._packages: _Memo[str, PackageInfo | None] = _Memo(ttl)
        self._references: _Memo[tuple[str, str], ReferenceTarget | None] = _Memo(ttl)
        self._namespace_visible: _Memo[tuple[int, str], bool] = _Memo(ttl)
        self._blob_visible: _Memo[tuple[int, str], bool] = _Memo(ttl)
        self._named: _Memo[tuple[str, str, str], PackageInfo | None] = _Memo(ttl)

    def cached_namespace_visible(self, principal: Principal, namespace: str) -> bool | None:
        """Whether ``principal`` may see ``namespace``; None: ask ``namespace_visible``."""
        if principal.is_admin:
            return True
        known, visible = self._namespace_visible.get((principal.tenant_id, namespace))
        return visible if known else None

    def namespace_visible(self, principal: Principal, namespace: str) -> bool:
        """Whether a namespace called ``namespace`` exists and ``principal`` may see it."""
        if principal.is_admin:
            return True
        with self.archive.db.read() as session:
            visible = session.scalar(
                select(
                    exists().where(Namespace.name == namespace, visible_namespace_filter(principal))
                )
            )
        self._namespace_visible.put((principal.tenant_id, namespace), bool(visible))
        return bool(visible)

    def cached_blob_visible(self, principal: Principal, sha256: str) -> bool | None:
        """Whether ``principal`` may see blob ``sha256``; None: ask ``blob_visible``."""
        if principal.is_admin:
            return True
        known, visible = self._blob_visible.get((principal.tenant_id, sha256))
        return visible if known else None

    def blob_visible(self, principal: Principal, sha256: str) -> bool:
        """Whether a namespace ``principal`` may see references blob ``sha256``."""
        if principal.is_admin:
            return True
        with self.archive.db.read() as session:
            visible = session.scalar(
                select(
                    exists().where(
                        Blob.sha256 == sha256,
                        Reference.blob_id == Blob.id,
                        Namespace.id == Reference.namespace_id,
                        visible_namespace_filter(principal),
                    )
                )
            )
        self._blob_visible.put((principal.tenant_id, sha256), bool(visible))
        return bool(visible)

    def cached_package(self, sha256: str) -> tuple[bool, PackageInfo | None]:
        """(known, info) without touching the database."""
        return self._packages.get(sha256)

    def package(self, sha256: str) -> PackageInfo | None:
        """The package a zip blob is, or None (no such blob, or not a package)."""
        with self.archive.db.read() as session:
            row = session.execute(
                select(Package.kind, Package.entry, Package.title, Package.created_at)
                .join(Blob, Blob.id == Package.blob_id)
                .where(Blob.sha256 == sha256)
            ).first()
        info = None if row is None else PackageInfo(sha256, *row)
        self._packages.put(sha256, info)
        return info

    def cached_reference(self, namespace: str, rest: str) -> tuple[bool, ReferenceTarget | None]:
        return self._references.get((namespace, rest))

    def reference(self, namespace: str, rest: str) -> ReferenceTarget | None:
        """Resolve ``rest`` = ``KEY/LABEL/PATH`` in ``namespace``. Keys may hold slashes
        and labels may not, so each split is a candidate; the shortest key that names a
        reference wins. None when no split does."""
        segments = rest.split("/")
        splits = [
            ("/".join(segments[:i]), segments[i], "/".join(segments[i + 1 :]))
            for i in range(1, min(len(segments) - 1, MAX_KEY_SEGMENTS + 1))
        ]
        splits = [s for s in splits if s[0] and s[1] and s[2]]
        target = None
        if splits:
            with self.archive.db.read() as session:
                rows = session.execute(
                    select(Reference.key, Reference.label, Blob.sha256)
                    .join(Namespace, Namespace.id == Reference.namespace_id)
                    .join(Blob, Blob.id == Reference.blob_id)
                    .where(
                        Namespace.name == namespace,
                        or_(
                            *(
                                and_(Reference.key == k, Reference.label == lb)
                                for k, lb, _ in splits
                            )
                        ),
                    )
                ).all()
            found = {(row.key, row.label): row.sha256 for row in rows}
            for key, label, path in splits:
                if (key, label) in found:
                    sha256 = found[(key, label)]
                    known, info = self.cached_package(sha256)
                    target = ReferenceTarget(
                        key, label, path, info if known else self.package(sha256)
                    )
                    break
        self._references.put((namespace, rest), target)
        return target

    def cached_named(self, namespace: str, key: str, label: str) -> tuple[bool, PackageInfo | None]:
        return self._named.get((namespace, key, label))

    def named(self, namespace: str, key: str, label: str) -> PackageInfo | None:
        """The package reference ``namespace:key:label`` names, or None (no such
        reference, or its blob is no package)."""
        with self.archive.db.read() as session:
            sha256 = session.scalar(
                select(Blob.sha256)
                .join(Reference, Reference.blob_id == Blob.id)
                .join(Namespace, Namespace.id == Reference.namespace_id)
                .where(Namespace.name == namespace, Reference.key == key, Reference.label == label)
            )
        info = None
        if sha256 is not None:
            known, info = self.cached_package(sha256)
            if not known:
                info = self.package(sha256)
        self._named.put((namespace, key, label), info)
        return info

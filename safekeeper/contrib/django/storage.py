"""``SafekeeperStorage``: Django's file storage API over safekeeper blobs and references.

    STORAGES = {"default": {
        "BACKEND": "safekeeper.contrib.django.SafekeeperStorage",
        "OPTIONS": {"data_dir": BASE_DIR / "safekeeper-data", "namespace": "media"},
    }}

A file named ``uploads/a.pdf`` is the reference ``media:uploads/a.pdf`` (label
``default``). Saving stores the bytes as a blob (hashed, durable, deduplicated) and
points the reference at it; deleting removes the reference, and the blob then goes by
the garbage rule after its grace period — every copy, audited. Files saved here are
ordinary safekeeper data: listed, replicated, verified and garbage-collected like any
other. Django's name-collision rules apply (``exists`` → ``get_available_name``).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from django.core.files.base import File
from django.core.files.storage import Storage
from django.utils.deconstruct import deconstructible

from safekeeper.archive import Archive, open_archive
from safekeeper.db.refs import ReferenceView, list_references
from safekeeper.errors import NotFound, SafekeeperError
from safekeeper.ids import DEFAULT_LABEL, RefSpec, check_key, check_name
from safekeeper.services.copies import ingest, inventory, refs

_archives: dict[tuple[str, str], Archive] = {}
_archives_lock = threading.Lock()

#: Opened files up to this size are held in memory, larger ones spill to a temp file.
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_UNSAFE_IN_KEY = re.compile(r"[^A-Za-z0-9._@+ /-]")


def shared_archive(data_dir: str | Path | None, config: str | Path | None) -> Archive:
    """One open archive per (data dir, config) per process, shared by every storage."""
    cache_key = (str(data_dir or ""), str(config or ""))
    with _archives_lock:
        if cache_key not in _archives:
            _archives[cache_key] = open_archive(data_dir, config=config)
        return _archives[cache_key]


@deconstructible
class SafekeeperStorage(Storage):  # type: ignore[misc]  # Django is untyped here
    def __init__(
        self,
        data_dir: str | Path | None = None,
        config: str | Path | None = None,
        namespace: str = "django",
        label: str = DEFAULT_LABEL,
        base_url: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.namespace = check_name("namespace", namespace)
        self.label = check_name("label", label)
        #: URLs are ``base_url`` + name: point it at ``safekeeper.contrib.django.views.serve``
        #: (or at anything else that serves the namespace).
        self.base_url = base_url

    @property
    def archive(self) -> Archive:
        return shared_archive(self.data_dir, self.config)

    def _spec(self, name: str) -> RefSpec:
        return RefSpec(self.namespace, check_key(name.replace("\\", "/")), self.label)

    def _reference(self, name: str) -> ReferenceView:
        spec = self._spec(name)
        with self.archive.db.read() as session:
            for view in list_references(
                session, namespace=self.namespace, key_prefix=spec.key, label=self.label
            ):
                if view.key == spec.key:
                    return view
        raise FileNotFoundError(name)

    # -- names ------------------------------------------------------------------------

    def get_valid_name(self, name: str) -> str:
        """Django's cleaning, then only the characters a reference key may hold."""
        cleaned = str(super().get_valid_name(name))
        return _UNSAFE_IN_KEY.sub("_", cleaned)

    # -- the storage API ----------------------------------------------------------------

    def _save(self, name: str, content: File) -> str:
        try:
            ingest.put_stream(self.archive, content.chunks(), self._spec(name))
        except SafekeeperError as exc:
            raise OSError(f"{name}: {exc}") from exc
        return name

    def _open(self, name: str, mode: str = "rb") -> File:
        if "w" in mode or "a" in mode or "+" in mode:
            raise ValueError("safekeeper files are immutable: save a new file instead")
        sha256 = self._reference(name).blob
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115  owned by the File
        try:
            for chunk in inventory.checked(inventory.open_blob(self.archive, sha256), sha256):
                spool.write(chunk)
        except SafekeeperError as exc:
            spool.close()
            raise OSError(f"{name}: {exc}") from exc
        spool.seek(0)
        return File(spool, name)

    def exists(self, name: str) -> bool:
        try:
            self._reference(name)
        except FileNotFoundError:
            return False
        return True

    def delete(self, name: str) -> None:
        # Django's contract: deleting a missing file is not an error.
        with contextlib.suppress(NotFound):
            refs.remove_ref(self.archive, self._spec(name), actor="django")

    def size(self, name: str) -> int:
        return self._reference(name).size

    def url(self, name: str) -> str:
        if self.base_url is None:
            raise ValueError("set the storage's base_url option to serve files")
        return self.base_url + quote(name.replace("\\", "/"))

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        directories: set[str] = set()
        files: list[str] = []
        with self.archive.db.read() as session:
            views = list_references(
                session, namespace=self.namespace, key_prefix=prefix, label=self.label
            )
        for view in views:
            head, sep, _ = view.key[len(prefix) :].partition("/")
            if sep:
                directories.add(head)
            else:
                files.append(head)
        return sorted(directories), files

    def get_modified_time(self, name: str) -> datetime:
        return self._reference(name).updated_at

    def get_created_time(self, name: str) -> datetime:
        return self._reference(name).updated_at

    def get_accessed_time(self, name: str) -> datetime:
        return self._reference(name).updated_at

    def path(self, name: str) -> Any:
        raise NotImplementedError("safekeeper files have no local path: use open()")

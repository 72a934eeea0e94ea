"""An fsspec filesystem over safekeeper references: ``safekeeper://NAMESPACE/KEY``.

    import pandas as pd
    df = pd.read_csv("safekeeper://raw/2026/run-1.csv")
    df.to_csv("safekeeper://results/run-1.csv")   # a new blob + reference on close

A path's first segment is a namespace, the rest a reference key (keys hold slashes);
every path names the reference with one label (``default`` unless the filesystem is
made with ``label=…``). Directories are implicit — the key prefixes in use — so there
are no empty directories. Writing stores a blob and points the reference at it when
the file closes; removing a file removes the reference (the blob then goes by the
garbage rule after its grace period, every copy, audited); copying points a second
reference at the same blob without moving bytes. Range reads go to a present copy.

The archive is the embedded default (``./safekeeper-data``) unless the filesystem is
made with ``data_dir=…``, ``config=…`` or an open ``archive=…``.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from safekeeper.archive import Archive, open_archive
from safekeeper.db.refs import ReferenceView, list_references, namespace_names
from safekeeper.errors import NotFound, SafekeeperError
from safekeeper.ids import DEFAULT_LABEL, RefSpec, check_key, check_name
from safekeeper.services.copies import ingest, inventory, refs
from safekeeper.stores.base import Source

#: Writes up to this size stay in memory before spilling to a temp file.
_SPOOL_IN_MEMORY = 8 * 1024 * 1024


class SafekeeperFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    protocol = "safekeeper"
    root_marker = ""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        config: str | Path | None = None,
        archive: Archive | None = None,
        label: str = DEFAULT_LABEL,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        self.archive = archive if archive is not None else open_archive(data_dir, config=config)
        self.label = check_name("label", label)

    # -- paths ----------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if path.startswith("safekeeper://"):
            path = path[len("safekeeper://") :]
        return path.strip("/")

    def _spec(self, path: str) -> RefSpec:
        """The reference a file path names; FileNotFoundError for a path that cannot be one."""
        path = self._strip_protocol(path)
        namespace, _, key = path.partition("/")
        try:
            return RefSpec(check_name("namespace", namespace), check_key(key), self.label)
        except SafekeeperError as exc:
            raise FileNotFoundError(path) from exc

    def _references(self, namespace: str, key_prefix: str) -> list[ReferenceView]:
        with self.archive.db.read() as session:
            return list_references(
                session, namespace=namespace, key_prefix=key_prefix, label=self.label
            )

    def _file_entry(self, view: ReferenceView) -> dict[str, Any]:
        return {
            "name": f"{view.namespace}/{view.key}",
            "size": view.size,
            "type": "file",
            "sha256": view.blob,
            "mtime": view.updated_at,
        }

    # -- listing --------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        if path == "":
            with self.archive.db.read() as session:
                names = namespace_names(session)
            entries = [{"name": name, "size": 0, "type": "directory"} for name in names]
            return entries if detail else [entry["name"] for entry in entries]
        namespace, _, key = path.partition("/")
        prefix = f"{key}/" if key else ""
        children: dict[str, dict[str, Any]] = {}
        for view in self._references(namespace, key):
            if view.key == key:  # the path is itself a file
                entry = self._file_entry(view)
                return [entry] if detail else [entry["name"]]
            if not view.key.startswith(prefix):
                continue  # a sibling such as "key.txt" next to "key/"
            head, sep, _ = view.key[len(prefix) :].partition("/")
            name = f"{namespace}/{prefix}{head}"
            if sep:
                children.setdefault(name, {"name": name, "size": 0, "type": "directory"})
            else:
                children[name] = self._file_entry(view)
        if not children and not (key == "" and self._namespace_exists(namespace)):
            raise FileNotFoundError(path)
        entries = [children[name] for name in sorted(children)]
        return entries if detail else [entry["name"] for entry in entries]

    def _namespace_exists(self, namespace: str) -> bool:
        with self.archive.db.read() as session:
            return namespace in namespace_names(session)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path == "":
            return {"name": "", "size": 0, "type": "directory"}
        namespace, _, key = path.partition("/")
        if key:
            for view in self._references(namespace, key):
                if view.key == key:
                    return self._file_entry(view)
                if view.key.startswith(f"{key}/"):
                    return {"name": path, "size": 0, "type": "directory"}
        elif self._namespace_exists(namespace):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def checksum(self, path: str) -> str:
        return str(self.info(path)["sha256"])

    def ukey(self, path: str) -> str:
        return self.checksum(path)

    def modified(self, path: str) -> datetime:
        modified: datetime = self.info(path)["mtime"]
        return modified

    # -- directories are implicit ---------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        pass

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        pass

    def rmdir(self, path: str) -> None:
        pass

    # -- reading and writing --------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | str | None = "default",
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AbstractBufferedFile:
        if mode == "xb" and self.exists(path):
            raise FileExistsError(path)
        if mode == "ab":
            raise NotImplementedError("blobs are immutable: append is not supported")
        if mode != "rb":
            self._spec(path)  # refuse a path that cannot be a reference before writing
        return SafekeeperFile(
            self,
            self._strip_protocol(path),
            mode,
            block_size=block_size,
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(path)
        size = int(info["size"])
        begin = 0 if start is None else (start if start >= 0 else max(size + start, 0))
        stop = size if end is None else (end if end >= 0 else max(size + end, 0))
        if stop <= begin:
            return b""
        return self._read_range(str(info["sha256"]), begin, min(stop, size) - begin)

    def _read_range(self, sha256: str, start: int, length: int) -> bytes:
        try:
            return inventory.read_blob_range(self.archive, sha256, start, length)
        except NotFound as exc:
            raise FileNotFoundError(str(exc)) from exc

    def _store(self, path: str, source: Source) -> None:
        try:
            ingest.put_stream(self.archive, source, self._spec(path))
        except SafekeeperError as exc:
            raise OSError(f"{path}: {exc}") from exc

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        self._store(path, [bytes(value)])

    # -- copy, remove ---------------------------------------------------------------

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Point a second reference at the same blob: no bytes move."""
        info = self.info(path1)
        if info["type"] != "file":
            return  # directories are implicit: there is nothing to create
        try:
            refs.set_ref(self.archive, self._spec(path2), str(info["sha256"]))
        except SafekeeperError as exc:
            raise OSError(f"{path2}: {exc}") from exc

    def rm_file(self, path: str) -> None:
        try:
            refs.remove_ref(self.archive, self._spec(path))
        except NotFound:
            raise FileNotFoundError(path) from None
        except SafekeeperError as exc:
            raise OSError(f"{path}: {exc}") from exc

    def rm(
        self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None
    ) -> None:
        """Remove the references among ``path`` (expanded); directories vanish with
        their last file, so they need no removal of their own."""
        for found in self.expand_path(path, recursive=recursive, maxdepth=maxdepth):
            if self.isfile(found):
                self.rm_file(found)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def created(self, path: str) -> datetime:
        return self.modified(path)


class SafekeeperFile(AbstractBufferedFile):  # type: ignore[misc]  # fsspec is untyped
    """Reads fetch ranges from a present copy; writes spool and store on close."""

    fs: SafekeeperFileSystem

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs._read_range(str(self.details["sha256"]), start, end - start)

    def _initiate_upload(self) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115  closed in _upload_chunk

    def _upload_chunk(self, final: bool = False) -> bool:
        self._spool.write(self.buffer.getbuffer())
        if final:
            self._spool.seek(0)
            try:
                self.fs._store(self.path, self._spool)
            finally:
                self._spool.close()
        return True

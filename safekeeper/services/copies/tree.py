"""The files of a tree put: the input walked and checked before anything is written.

Every file is found readable and every reference key valid first, so bad input
(a missing path, an unreadable file, a key too long) leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from safekeeper.errors import BadInput
from safekeeper.ids import RefSpec, check_key, encode_key_segment, path_key


@dataclass(frozen=True)
class TreeFile:
    path: Path
    #: Path relative to the directory given, with forward slashes.
    relative: str
    size: int
    #: ``relative`` as a reference key suffix (each segment ``encode_key_segment``-ed).
    relative_key: str
    #: The path as given (directory given + ``relative``) as a reference key (``path_key``).
    path_key: str


def scan(paths: Sequence[Path]) -> list[TreeFile]:
    """Expand files and directories into the files to put, checking every one is readable
    before anything is written (bad input leaves nothing behind)."""
    found: list[TreeFile] = []
    for path in paths:
        if not path.exists():
            raise BadInput(f"{display_path(path)}: no such file or directory")
        if path.is_dir():
            root_key = path_key(str(path))
            for file_path, relative in _walk(path, ""):
                relative_key = "/".join(map(encode_key_segment, relative.split("/")))
                found.append(
                    TreeFile(
                        file_path,
                        relative,
                        _readable_size(file_path),
                        relative_key,
                        f"{root_key}/{relative_key}" if root_key else relative_key,
                    )
                )
        elif path.is_file():
            found.append(
                TreeFile(
                    path,
                    path.name,
                    _readable_size(path),
                    encode_key_segment(path.name),
                    path_key(str(path)),
                )
            )
        else:
            raise BadInput(f"{display_path(path)}: not a regular file or directory")
    return found


def _walk(directory: Path, relative: str) -> Iterator[tuple[Path, str]]:
    """The regular files under ``directory`` in name order, depth first, with their
    paths relative to the top (forward slashes). Links and special files are not
    content: skipped, and linked directories not entered. One ``scandir`` per
    directory: its entries know their type without a ``stat`` per file."""
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        raise BadInput(
            f"{display_path(exc.filename or directory)}: cannot read directory: {exc.strerror}"
        ) from exc
    files: list[tuple[Path, str]] = []
    directories: list[tuple[Path, str]] = []
    for entry in entries:
        name = f"{relative}/{entry.name}" if relative else entry.name
        if entry.is_file(follow_symlinks=False):
            files.append((directory / entry.name, name))
        elif entry.is_dir(follow_symlinks=False):
            directories.append((directory / entry.name, name))
    yield from files  # a directory's own files first, then its subdirectories (as os.walk)
    for child, name in directories:
        yield from _walk(child, name)


def _readable_size(path: Path) -> int:
    if not os.access(path, os.R_OK):
        raise BadInput(f"{display_path(path)}: permission denied (cannot read)")
    return path.stat().st_size


def file_references(
    files: Sequence[TreeFile],
    ref: RefSpec | None = None,
    *,
    key_per_file: bool = False,
    path_namespace: str | None = None,
) -> list[RefSpec | None]:
    """The reference each file gets, checked before anything is written (BadInput names
    the file whose key is not valid, e.g. too long).

    With ``ref`` and ``key_per_file``: ``NAMESPACE:KEY/<relative path>:LABEL``; with
    ``ref`` alone (a single file): ``ref`` as given; without ``ref`` but with
    ``path_namespace``: ``path_namespace:<path as given>`` (``TreeFile.path_key``);
    otherwise none.
    """
    references: list[RefSpec | None] = []
    for file in files:
        if ref is not None:
            key = f"{ref.key}/{file.relative_key}" if key_per_file else ref.key
            spec: RefSpec | None = RefSpec(ref.namespace, key, ref.label)
        elif path_namespace is not None:
            spec = RefSpec(path_namespace, file.path_key)
        else:
            spec = None
        if spec is not None:
            try:
                check_key(spec.key)
            except BadInput as exc:
                raise BadInput(f"{display_path(file.path)}: {exc}") from exc
        references.append(spec)
    return references


def display_path(path: Path | str) -> str:
    """A path as it can be printed on one line: bytes that are not UTF-8 and control
    characters (a newline in a file name) shown as escapes."""
    text = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

"""The bundle format (``docs/bundle-format.md``): the manifest, tar headers, and a
forward-only reader over a plain or zstd-compressed bundle stream.

``tarfile`` parses the headers (pax, GNU and ustar alike); member bytes are read
straight from the stream in large pieces, never through ``tarfile``'s small buffers.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, BinaryIO, Literal, TypeVar

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from safekeeper.errors import BadInput
from safekeeper.ids import check_key, check_name, is_blob_id

FORMAT = "safekeeper-bundle"
VERSION = 1
MANIFEST_NAME = "manifest.json"
#: The manifest is read into memory; this bounds it (over a million references).
MAX_MANIFEST_SIZE = 256 * 1024 * 1024
#: A manifest has at most one JSON value or container per this many bytes (a real one
#: has one per ~25): checked before parsing, so ``[{},{},…]`` cannot make 24 bytes of
#: Python objects out of each 3 bytes of input. Parsing then costs a few times its size.
MANIFEST_BYTES_PER_VALUE = 16
#: Decompressed bytes allowed per compressed byte read, past the first ``RATIO_FLOOR``:
#: a few KiB of zstd that unpack to gigabytes of zeros are refused early.
MAX_RATIO = 1024
RATIO_FLOOR = 64 * 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_SIZE = 4 * 1024 * 1024
PIECE = 256 * 1024
BLOCK = tarfile.BLOCKSIZE
#: Values per IN (...) list: SQLite limits the number of bound parameters.
QUERY_BATCH = 500

#: ``progress(bytes_done, bytes_total)`` over the blobs' bytes, export and import alike.
Progress = Callable[[int, int], None]

_Item = TypeVar("_Item")


def batches(items: Sequence[_Item]) -> Iterator[Sequence[_Item]]:
    """``items`` in slices of ``QUERY_BATCH``, for IN (...) queries over a whole bundle."""
    for start in range(0, len(items), QUERY_BATCH):
        yield items[start : start + QUERY_BATCH]


# -- the manifest ----------------------------------------------------------------------


def _blob_id(value: str) -> str:
    if not is_blob_id(value):
        raise ValueError("not a blob id (64 lowercase hex characters)")
    return value


def _checked(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except BadInput as exc:  # pydantic reports ValueErrors with the field's location
        raise ValueError(str(exc)) from None


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True)


class ManifestBlob(_Entry):
    sha256: str
    size: int = Field(ge=0)
    _sha = field_validator("sha256")(_blob_id)


class ManifestReference(_Entry):
    key: str
    label: str
    blob: str
    size: int = Field(ge=0)
    _blob = field_validator("blob")(_blob_id)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return _checked(check_key, value)

    @field_validator("label")
    @classmethod
    def _label(cls, value: str) -> str:
        return _checked(lambda v: check_name("label", v), value)


class ManifestPackage(_Entry):
    blob: str
    kind: Literal["scorm12", "scorm2004", "html"]
    entry: str = Field(min_length=1)
    title: str | None = None
    member_count: int = Field(ge=0)
    extracted_size: int = Field(ge=0)
    _blob = field_validator("blob")(_blob_id)


class Manifest(_Entry):
    format: Literal["safekeeper-bundle"] = "safekeeper-bundle"
    version: Literal[1] = 1
    created_at: datetime
    namespace: str
    references: list[ManifestReference]
    packages: list[ManifestPackage]
    #: In the order their members follow the manifest.
    blobs: list[ManifestBlob]

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @property
    def total_size(self) -> int:
        return sum(blob.size for blob in self.blobs)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def check_manifest_density(data: bytes) -> None:
    """BadInput unless the JSON has at most one value per ``MANIFEST_BYTES_PER_VALUE``
    bytes (strings count as one value, whatever their length)."""
    structure = _JSON_STRING.sub(b"0", data)
    values = structure.count(b",") + structure.count(b"{") + structure.count(b"[")
    if values > len(data) // MANIFEST_BYTES_PER_VALUE + 64:
        raise BadInput("bundle manifest is not a safekeeper manifest (far too many values)")


def parse_manifest(data: bytes) -> Manifest:
    """The manifest, or BadInput saying what is wrong with it."""
    check_manifest_density(data)
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"bundle manifest is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BadInput(f"not a safekeeper bundle (manifest format is not {FORMAT!r})")
    if raw.get("version") != VERSION:
        raise BadInput(
            f"bundle format version {raw.get('version')!r} is not supported "
            f"(this safekeeper reads version {VERSION})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise BadInput(f"bundle manifest is invalid at {where}: {error['msg']}") from None
    check_name("namespace", manifest.namespace)
    sizes = {b.sha256: b.size for b in manifest.blobs}
    if len(sizes) != len(manifest.blobs):
        raise BadInput("bundle manifest lists a blob twice")
    if len({(r.key, r.label) for r in manifest.references}) != len(manifest.references):
        raise BadInput("bundle manifest lists a reference twice")
    for ref in manifest.references:
        if sizes.get(ref.blob) != ref.size:
            raise BadInput(
                f"bundle manifest: reference {ref.key}:{ref.label} names blob {ref.blob}, "
                "which is not among its blobs with that size"
            )
    for package in manifest.packages:
        if package.blob not in sizes:
            raise BadInput(f"bundle manifest: package {package.blob} is not among its blobs")
    return manifest


# -- writing -----------------------------------------------------------------------------


class TarWriter:
    """A POSIX (pax) tar written member by member: headers from ``tarfile``, member
    bytes passed straight through to ``sink`` as the caller streams them."""

    def __init__(self, sink: Any, mtime: int) -> None:
        self._sink = sink
        self._mtime = mtime
        self._written = 0

    def _put(self, data: bytes) -> None:
        self._sink.write(data)
        self._written += len(data)

    def begin(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, self._mtime, 0o444
        self._put(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def write(self, chunk: bytes) -> None:
        self._put(chunk)

    def end(self) -> None:
        self._put(b"\0" * (-self._written % BLOCK))

    def add(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self.write(data)
        self.end()

    def close(self) -> None:
        """The end-of-archive marker (two zero blocks), then zeros to a whole record."""
        self._put(b"\0" * (2 * BLOCK))
        self._put(b"\0" * (-self._written % tarfile.RECORDSIZE))


def blob_member(sha256: str) -> str:
    return f"blobs/{sha256}"


# -- reading -----------------------------------------------------------------------------


class BundleReader:
    """The uncompressed tar stream of a bundle, read forward only.

    ``tarfile`` (opened on this object) needs ``tell`` and forward ``seek``; members'
    bytes are read with ``read_exactly``. ``what`` names the part being read, for
    error messages.
    """

    def __init__(self, source: BinaryIO) -> None:
        head = _read_up_to(source, len(ZSTD_MAGIC))
        self._read: Callable[[int], bytes]
        self._compressed: _Prefixed | None = None
        self._decompressed = 0
        if head == ZSTD_MAGIC:
            # stream_reader bounds each read's output (a zstd bomb cannot blow memory
            # up); a stream cut short is caught by the tar-level checks instead.
            self._compressed = _Prefixed(head, source)
            decompressed = zstandard.ZstdDecompressor().stream_reader(
                self._compressed,  # type: ignore[arg-type]  # read() is all it uses
                read_size=1024 * 1024,
                read_across_frames=True,
            )
            self._read = decompressed.read
        else:
            self._read = _Prefixed(head, source).read
        self._buffer = b""
        self._offset = 0  # into _buffer
        self._position = 0
        self.what = "the manifest"

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = 0) -> int:
        if whence != 0 or position < self._position:
            raise BadInput(f"bundle is damaged near {self.what} (its tar headers point back)")
        while position > self._position:
            if not self.read(min(position - self._position, READ_SIZE)):
                break  # like a file: seeking past the end is allowed; reading finds EOF
        return self._position

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end); -1: some bytes, or none at the end."""
        if size < 0:
            return self.read_some(READ_SIZE)
        if size > READ_SIZE:
            # Only tarfile asks for more: a pax or GNU long-name header, which it reads
            # whole. Ours are a few hundred bytes; a huge one is a memory bomb.
            raise BadInput(f"bundle has a tar header of {size} bytes near {self.what}")
        parts: list[bytes] = []
        while size > 0 and (piece := self.read_some(size)):
            parts.append(piece)
            size -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_some(self, size: int) -> bytes:
        """Between 1 and ``size`` bytes (none only at the end), copied as little as
        possible: a large read with nothing buffered comes straight from the source."""
        if self._offset >= len(self._buffer):
            self._buffer, self._offset = self._fill(max(size, 64 * 1024)), 0
        piece = self._buffer[self._offset : self._offset + size]
        self._offset += len(piece)
        self._position += len(piece)
        return piece

    def read_exactly(self, size: int) -> bytes:
        parts = []
        while size > 0:
            piece = self.read(min(size, READ_SIZE))
            if not piece:
                raise BadInput(f"bundle is truncated inside {self.what}")
            parts.append(piece)
            size -= len(piece)
        return b"".join(parts)

    def _fill(self, size: int) -> bytes:
        try:
            data = self._read(size)
        except zstandard.ZstdError as exc:
            raise BadInput(f"bundle is damaged inside {self.what} (zstd: {exc})") from None
        if self._compressed is not None:
            self._decompressed += len(data)
            allowed = max(RATIO_FLOOR, MAX_RATIO * self._compressed.consumed)
            if self._decompressed > allowed:
                raise BadInput(
                    f"bundle unpacks to more than {MAX_RATIO} times its compressed size "
                    f"near {self.what}: refused as a decompression bomb"
                )
        return data


class MemberBody:
    """Exactly ``size`` bytes of a member, as a readable file object for ``Store.stage``.

    Reads return at most ``PIECE`` bytes: ``write_hashed`` then hashes one piece on its
    helper thread while it writes the next, even for a blob of a few hundred KiB.
    """

    def __init__(self, reader: BundleReader, size: int) -> None:
        self._reader = reader
        self._left = size

    def read(self, size: int = -1) -> bytes:
        want = min(PIECE, self._left if size < 0 else min(size, self._left))
        if want == 0:
            return b""
        piece = self._reader.read_some(want)
        if not piece:
            raise BadInput(f"bundle is truncated inside {self._reader.what}")
        self._left -= len(piece)
        return piece


class _Prefixed:
    """``head`` (bytes already read to sniff the format), then the rest of ``source``."""

    def __init__(self, head: bytes, source: BinaryIO) -> None:
        self._head = head
        self._source = source
        #: Bytes handed out so far (the compressed size, for the ratio check).
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            self.consumed += len(head)
            return head
        data = self._source.read(size)
        self.consumed += len(data)
        return data


def _read_up_to(source: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size and (piece := source.read(size - len(data))):
        data += piece
    return data


def open_tar(reader: BundleReader) -> tarfile.TarFile:
    """A TarFile reading headers from ``reader``; BadInput if it is no tar at all."""
    try:
        return tarfile.TarFile(fileobj=reader, mode="r")  # type: ignore[arg-type]
    except tarfile.TarError as exc:
        raise BadInput(f"not a bundle, or one truncated before its manifest ({exc})") from None


def next_member(tar: tarfile.TarFile, reader: BundleReader) -> tarfile.TarInfo | None:
    try:
        member = tar.next()
    except tarfile.TarError as exc:
        raise BadInput(f"bundle is damaged before {reader.what}: {exc}") from None
    if member is not None and reader.tell() != member.offset_data:
        raise BadInput(f"bundle is damaged at member {member.name!r}")
    return member


def check_end(tar: tarfile.TarFile, reader: BundleReader) -> None:
    """After the last member: the end-of-archive marker (two zero blocks), then at most
    the zeros that pad the tar's last record, then the end of the stream. Nothing more
    is read: megabytes of (well-compressed) zeros after the marker are refused, not
    unpacked."""
    reader.what = "the end-of-archive marker"
    reader.seek(tar.offset)
    marker = reader.read_exactly(2 * BLOCK)
    if marker.strip(b"\0"):
        raise BadInput("bundle has an unexpected member or data after its last blob")
    padding = reader.read(tarfile.RECORDSIZE)
    if padding.strip(b"\0") or reader.read(1):
        raise BadInput("bundle has data after its end-of-archive marker")


def read_manifest(tar: tarfile.TarFile, reader: BundleReader) -> Manifest:
    """The first member, ``manifest.json``, read and checked."""
    member = next_member(tar, reader)  # tarfile read it when opening
    if member is None or member.name != MANIFEST_NAME or not member.isreg():
        raise BadInput(f"not a bundle: the first member is not {MANIFEST_NAME}")
    if member.size > MAX_MANIFEST_SIZE:
        raise BadInput(f"bundle manifest is too large ({member.size} bytes)")
    data = reader.read_exactly(member.size)
    return parse_manifest(data)


def expect_blob_member(tar: tarfile.TarFile, reader: BundleReader, blob: ManifestBlob) -> None:
    """The next member must be ``blob``'s, of its size."""
    member = next_member(tar, reader)
    if member is None:
        raise BadInput(f"bundle ends before blob {blob.sha256} (truncated or damaged)")
    if member.name != blob_member(blob.sha256) or not member.isreg():
        raise BadInput(f"bundle has member {member.name!r} where blob {blob.sha256} should be")
    if member.size != blob.size:
        raise BadInput(
            f"blob {blob.sha256} has {member.size} bytes in the bundle, "
            f"its manifest says {blob.size}"
        )

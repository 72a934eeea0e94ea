"""Validate an uploaded zip package before anything of it is stored.

Three passes over a seekable file, none of which trusts the zip:

1. the central directory: every member name is made a safe relative path (or
   rejected), duplicates after normalisation, symlinks, encryption, unsupported
   compression, members overlapping each other, and the budgets as declared;
2. every member is decompressed once by our own reader, counting the real bytes and
   the CRC: a header that lies about a size, a bomb that only shows while inflating,
   or a corrupt member is caught here (zipfile's own reader stops at the declared
   size and so would hide a lie behind a CRC error);
3. the entry point: a SCORM manifest (``manifest.py``) or a root ``index.html``.

Every rejection is a ``PackageRejected(code, message, member)``.
"""

from __future__ import annotations

import html
import re
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Literal
from urllib.parse import unquote

from safekeeper.config import PackagesConfig
from safekeeper.errors import PackageRejected
from safekeeper.packages.manifest import parse_manifest

PackageKind = Literal["scorm12", "scorm2004", "html"]

MANIFEST_NAME = "imsmanifest.xml"
#: Pages tried, in order, when there is no manifest.
INDEX_NAMES = ("index.html", "index.htm")
#: Compression ratios are only judged past this many bytes: a tiny file of repeated
#: characters legitimately deflates 500x, and cannot hurt anyone.
RATIO_FLOOR = 1024 * 1024
#: What real packaging tools write. Others (bzip2, lzma, deflate64, ...) would make the
#: package cache depend on more decoders for no benefit to web content.
SUPPORTED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}

#: Filesystem limits a member path must fit into the cache (NAME_MAX; PATH_MAX less
#: room for the cache directory itself).
MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 1024

_CHUNK = 256 * 1024
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_FLAG_ENCRYPTED = 0x1
_FLAG_STRONG_ENCRYPTION = 0x40
_FLAG_UTF8 = 0x800
_DRIVE = re.compile(r"[A-Za-z]:")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class PackageBudgets:
    max_members: int = 50_000
    max_extracted_size: int = 2 * 1024**3
    max_compression_ratio: float = 200.0

    @classmethod
    def from_config(cls, config: PackagesConfig) -> PackageBudgets:
        return cls(config.max_members, config.max_extracted_size, config.max_compression_ratio)


@dataclass(frozen=True)
class PackageInfo:
    kind: PackageKind
    #: The launch page: a member path inside the zip, normalised by ``safe_member_path``
    #: (identical to the name in the zip for any ordinary package).
    entry: str
    title: str | None
    #: Files (not folder entries).
    member_count: int
    extracted_size: int


def _reject(code: str, member: str | None, message: str) -> PackageRejected:
    return PackageRejected(code, f"{member}: {message}" if member else message, member)


def safe_member_path(name: str) -> str:
    """``name`` as a normalised relative POSIX path (``./a//b/`` → ``a/b``), or raise
    PackageRejected ``unsafe_path``.

    Refused: NUL, any backslash (a separator on Windows, so ``..\\x`` would escape),
    absolute paths, drive letters, any ``..`` segment (even one that would stay
    inside), and names that are empty after normalisation.
    """
    if "\x00" in name:
        raise _reject("unsafe_path", name.replace("\x00", "\\0"), "name contains NUL")
    if "\\" in name:
        raise _reject("unsafe_path", name, "name contains a backslash")
    if name.startswith("/"):
        raise _reject("unsafe_path", name, "absolute path")
    if _DRIVE.match(name):
        raise _reject("unsafe_path", name, "drive letter path")
    segments = [s for s in name.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise _reject("unsafe_path", name, "'..' path segment")
    if not segments:
        raise _reject("unsafe_path", name or "''", "empty name")
    path = "/".join(segments)
    # Longer names fail to extract (ENAMETOOLONG): refuse them at upload, not on play.
    if len(path.encode()) > MAX_PATH_BYTES or any(
        len(s.encode()) > MAX_SEGMENT_BYTES for s in segments
    ):
        raise _reject(
            "unsafe_path",
            name[:200],
            f"name longer than {MAX_PATH_BYTES} bytes or with a part over {MAX_SEGMENT_BYTES}",
        )
    return path


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    path: str


def validate_package(file: BinaryIO, budgets: PackageBudgets) -> PackageInfo:
    """Check the zip in ``file`` (seekable; left open) and describe it."""
    with _open_zip(file) as archive:
        members = _check_directory(archive, budgets)
        end_of_data = _central_directory_offset(archive, file)
        _check_layout(file, members, end_of_data)
        extracted = _check_contents(file, members, budgets)
        kind, entry, title = _entry_point(archive, members)
    return PackageInfo(kind, entry, title, len(members), extracted)


def _open_zip(file: BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file)
    except UnicodeDecodeError as exc:
        raw = exc.object if isinstance(exc.object, bytes) else b""
        name = raw.decode("utf-8", "backslashreplace")
        raise _reject(
            "bad_member_name", name, "name is marked UTF-8 but is not valid UTF-8"
        ) from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise _reject("not_a_zip", None, f"not a readable zip file ({exc})") from exc


def _check_directory(archive: zipfile.ZipFile, budgets: PackageBudgets) -> list[_Member]:
    """Pass 1: names, kinds and declared sizes, from the central directory only."""
    infos = archive.infolist()
    if len(infos) > budgets.max_members:
        raise _reject(
            "too_many_members",
            None,
            f"{len(infos)} members, more than the {budgets.max_members} allowed",
        )
    files: dict[str, _Member] = {}
    #: NFC form → path: "é" composed and decomposed are one name to a user and to some
    #: filesystems (APFS), which would extract only one of the two.
    unicode_forms: dict[str, str] = {}
    folders: set[str] = set()
    declared_total = 0
    for info in infos:
        # orig_filename: ZipInfo cuts ``filename`` at a NUL, hiding it.
        name = info.orig_filename
        path = safe_member_path(name)
        if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
            raise _reject("encrypted_member", name, "member is encrypted")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise _reject("symlink_member", name, "member is a symbolic link")
        if name.endswith("/"):
            folders.add(path)
            continue
        if info.compress_type not in SUPPORTED_METHODS:
            raise _reject(
                "unsupported_compression",
                name,
                f"compression method {info.compress_type} (only stored and deflated)",
            )
        # Case differences are allowed (``A.html`` and ``a.html`` are two files, as on
        # the web server that serves them); only exact duplicates after normalisation
        # are refused, since extraction would silently keep one of them.
        if path in files:
            raise _reject(
                "duplicate_member", name, f"same path as {files[path].info.orig_filename!r}"
            )
        same = unicode_forms.setdefault(unicodedata.normalize("NFC", path), path)
        if same != path:
            raise _reject(
                "duplicate_member", name, f"same path as {same!r} after Unicode normalisation"
            )
        files[path] = _Member(info, path)
        folders.update(_parents(path))
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise _reject(
                "size_mismatch",
                name,
                f"stored member declares {info.file_size} bytes but holds {info.compress_size}",
            )
        _check_ratio(name, info.file_size, info.compress_size, budgets)
        declared_total += info.file_size
        if declared_total > budgets.max_extracted_size:
            raise _reject(
                "too_large",
                name,
                f"package would extract to more than {budgets.max_extracted_size} bytes",
            )
    for path, member in files.items():
        if path in folders:
            raise _reject(
                "duplicate_member", member.info.orig_filename, "path is both a file and a folder"
            )
    return list(files.values())


def _parents(path: str) -> list[str]:
    segments = path.split("/")
    return ["/".join(segments[:i]) for i in range(1, len(segments))]


def _check_ratio(member: str | None, size: int, compressed: int, budgets: PackageBudgets) -> None:
    if size > RATIO_FLOOR and size > budgets.max_compression_ratio * max(compressed, 1):
        ratio = size / max(compressed, 1)
        raise _reject(
            "compression_ratio",
            member,
            f"compression ratio {ratio:.0f}x exceeds {budgets.max_compression_ratio:g}x",
        )


def _central_directory_offset(archive: zipfile.ZipFile, file: BinaryIO) -> int:
    start: object = getattr(archive, "start_dir", None)
    if isinstance(start, int):
        return start
    return file.seek(0, 2)  # pragma: no cover - CPython always sets start_dir


def _check_layout(file: BinaryIO, members: list[_Member], end_of_data: int) -> None:
    """Each member's data lies before the central directory and overlaps no other
    member: overlapping members are how a few kilobytes inflate to gigabytes while
    every member's own ratio looks modest."""
    previous_end = 0
    previous_name = ""
    for member in sorted(members, key=lambda m: m.info.header_offset):
        start = member.info.header_offset
        if start < previous_end:
            raise _reject(
                "not_a_zip", member.info.orig_filename, f"member overlaps {previous_name!r}"
            )
        previous_end = _data_offset(file, member) + member.info.compress_size
        previous_name = member.info.orig_filename
        if previous_end > end_of_data:
            raise _reject("not_a_zip", previous_name, "member data runs past the end of the zip")


def _data_offset(file: BinaryIO, member: _Member) -> int:
    """Read the member's local header; check it names the same member."""
    info = member.info
    file.seek(info.header_offset)
    header = file.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        raise _reject("not_a_zip", info.orig_filename, "local header missing or damaged")
    fields = _LOCAL_HEADER.unpack(header)
    flags: int = fields[2]
    name_length: int = fields[9]
    extra_length: int = fields[10]
    raw_name = file.read(name_length)
    try:
        local_name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
    except UnicodeDecodeError as exc:
        raise _reject(
            "bad_member_name", info.orig_filename, "local header name is not valid UTF-8"
        ) from exc
    if local_name != info.orig_filename:
        raise _reject(
            "bad_member_name",
            info.orig_filename,
            f"local header names it {local_name!r}: two names for one member",
        )
    data_offset: int = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    return data_offset


def _check_contents(file: BinaryIO, members: list[_Member], budgets: PackageBudgets) -> int:
    """Pass 2: inflate every member once; return the real extracted size."""
    total = 0
    compressed_total = 0
    for member in members:
        total += _check_member(file, member, budgets, total)
        compressed_total += member.info.compress_size
    _check_ratio(None, total, compressed_total, budgets)
    return total


def _check_member(file: BinaryIO, member: _Member, budgets: PackageBudgets, before: int) -> int:
    info = member.info
    name = info.orig_filename
    file.seek(_data_offset(file, member))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type else None
    real = 0
    crc = 0

    def take(data: bytes) -> None:
        nonlocal real, crc
        real += len(data)
        crc = zlib.crc32(data, crc)
        if real > info.file_size:
            raise _reject("size_mismatch", name, f"declares {info.file_size} bytes but holds more")
        if before + real > budgets.max_extracted_size:
            raise _reject(
                "too_large",
                name,
                f"package extracts to more than {budgets.max_extracted_size} bytes",
            )
        _check_ratio(name, real, info.compress_size, budgets)

    remaining = info.compress_size
    while remaining and not (inflater is not None and inflater.eof):
        chunk = file.read(min(_CHUNK, remaining))
        if not chunk:
            raise _reject("not_a_zip", name, "member data is truncated")
        remaining -= len(chunk)
        if inflater is None:
            take(chunk)
            continue
        try:
            data = inflater.decompress(chunk, _CHUNK)
            take(data)
            # Bounded output per call: a bomb is counted as it inflates, never held.
            while inflater.unconsumed_tail or len(data) == _CHUNK:
                data = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
                take(data)
                if not data:
                    break
        except zlib.error as exc:
            raise _reject("not_a_zip", name, f"corrupt deflate data ({exc})") from exc
    if inflater is not None and not inflater.eof:
        raise _reject("not_a_zip", name, "deflate stream is truncated")
    if real != info.file_size:
        raise _reject("size_mismatch", name, f"declares {info.file_size} bytes but holds {real}")
    if crc != info.CRC:
        raise _reject("crc_mismatch", name, "CRC-32 does not match the data")
    return real


def _entry_point(
    archive: zipfile.ZipFile, members: list[_Member]
) -> tuple[PackageKind, str, str | None]:
    """Pass 3: the shallowest manifest, else a root index page."""
    by_path = {m.path: m for m in members}
    manifests = [m for m in members if m.path.rsplit("/", 1)[-1] == MANIFEST_NAME]
    if manifests:
        depth = min(m.path.count("/") for m in manifests)
        shallowest = [m for m in manifests if m.path.count("/") == depth]
        if len(shallowest) > 1:
            names = ", ".join(sorted(m.path for m in shallowest))
            raise _reject(
                "ambiguous_manifest",
                shallowest[0].info.orig_filename,
                f"several manifests at the same depth ({names}): which one is the package?",
            )
        manifest = shallowest[0]
        root = manifest.path[: -len(MANIFEST_NAME)]
        info = parse_manifest(archive.read(manifest.info), manifest.info.orig_filename)
        if info.href is not None:
            entry = _launch_member(root, info.href, by_path, manifest.path)
            return info.kind, entry, info.title
        # No item and no resource names a page: the index page beside the manifest,
        # then at the top (lenient, like the systems these packages come from).
        for name in dict.fromkeys((*(root + n for n in INDEX_NAMES), *INDEX_NAMES)):
            if name in by_path:
                return info.kind, name, info.title
        raise _reject(
            "manifest_invalid",
            manifest.info.orig_filename,
            "no launch page: no item or resource has an href, and there is no index.html",
        )
    for name in INDEX_NAMES:
        if name in by_path:
            return "html", name, _html_title(archive, by_path[name])
    nested = sorted(p for p in by_path if p.rsplit("/", 1)[-1] in INDEX_NAMES)
    hint = f" (there is {nested[0]}: zip the folder's contents, not the folder)" if nested else ""
    raise _reject(
        "no_entry_point",
        None,
        f"no {MANIFEST_NAME} and no index.html at the top level of the package{hint}",
    )


def _launch_member(root: str, href: str, by_path: dict[str, _Member], manifest: str) -> str:
    if not href or "://" in href or href.startswith("//"):
        raise _reject(
            "launch_missing", manifest, f"launch href {href!r} is not a page inside the package"
        )
    for candidate in (href, unquote(href)):
        try:
            path = safe_member_path(root + candidate)
        except PackageRejected as exc:
            raise _reject(
                "launch_missing", manifest, f"launch href {href!r} points outside the package"
            ) from exc
        if path in by_path:
            return path
    raise _reject("launch_missing", manifest, f"launch page {root + href!r} is not in the package")


def _html_title(archive: zipfile.ZipFile, member: _Member) -> str | None:
    with archive.open(member.info) as page:
        head = page.read(64 * 1024)
    found = _TITLE.search(head)
    if found is None:
        return None
    title = html.unescape(found.group(1).decode("utf-8", "replace")).strip()
    return " ".join(title.split())[:500] or None

"""Builders for test zip packages: SCORM 1.2, SCORM 2004, plain HTML, and hazards.

Every builder returns the zip's bytes and, given a path, also writes them there.
Other test modules (package cache, serving, export) import these.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

#: A 1x1 transparent PNG.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)
#: 4 KiB of varied bytes, so range requests and compression have something to work on.
ASSET_4K = bytes((i * 31 + 7) % 256 for i in range(4096))

INDEX_HTML = (
    b"<!doctype html><html><head><title>Demo course</title>"
    b'<link rel="stylesheet" href="css/style.css"><script src="js/app.js"></script>'
    b'</head><body><h1>Demo</h1><img src="img/logo.png"></body></html>'
)
STYLE_CSS = b"body { font-family: sans-serif; }\n"
APP_JS = b"document.addEventListener('DOMContentLoaded', () => console.log('ready'));\n"

SCORM12_MANIFEST = """<?xml version="1.0" encoding="UTF-8"?>
<manifest identifier="com.example.demo12" version="1.0"
  xmlns="http://www.imsproject.org/xsd/imscp_rootv1p1p2"
  xmlns:adlcp="http://www.adlnet.org/xsd/adlcp_rootv1p2"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.imsproject.org/xsd/imscp_rootv1p1p2 imscp_rootv1p1p2.xsd
    http://www.adlnet.org/xsd/adlcp_rootv1p2 adlcp_rootv1p2.xsd">
  <metadata>
    <schema>ADL SCORM</schema>
    <schemaversion>1.2</schemaversion>
  </metadata>
  <organizations default="org1">
    <organization identifier="org1">
      <title>{title}</title>
      <item identifier="item1" identifierref="res1">
        <title>Lesson 1</title>
      </item>
    </organization>
  </organizations>
  <resources>
    <resource identifier="res1" type="webcontent" adlcp:scormtype="sco" href="{href}">
      <file href="{href}"/>
      <file href="shared/style.css"/>
    </resource>
  </resources>
</manifest>
"""

SCORM2004_MANIFEST = """<?xml version="1.0" encoding="UTF-8"?>
<manifest identifier="com.example.demo2004" version="1"
  xmlns="http://www.imsglobal.org/xsd/imscp_v1p1"
  xmlns:adlcp="http://www.adlnet.org/xsd/adlcp_v1p3"
  xmlns:adlseq="http://www.adlnet.org/xsd/adlseq_v1p3"
  xmlns:adlnav="http://www.adlnet.org/xsd/adlnav_v1p3"
  xmlns:imsss="http://www.imsglobal.org/xsd/imsss"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <metadata>
    <schema>ADL SCORM</schema>
    <schemaversion>2004 4th Edition</schemaversion>
  </metadata>
  <organizations default="org_main">
    <organization identifier="org_other">
      <title>Not the default</title>
      <item identifier="other_item" identifierref="res_other"><title>Other</title></item>
    </organization>
    <organization identifier="org_main">
      <title>{title}</title>
      <item identifier="item_1" identifierref="res_sco">
        <title>Module 1</title>
      </item>
    </organization>
  </organizations>
  <resources>
    <resource identifier="res_other" type="webcontent" adlcp:scormType="sco"
      href="other/index.html">
      <file href="other/index.html"/>
    </resource>
    <resource identifier="res_sco" type="webcontent" adlcp:scormType="sco" href="{href}">
      <file href="content/launch.html"/>
    </resource>
  </resources>
</manifest>
"""


#: A fixed timestamp, so the same members always make the same bytes (same blob id).
_DATE = (2024, 1, 2, 3, 4, 6)


def build_zip(
    members: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    path: Path | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip of ``members`` (name → bytes, in order); names are written as given."""
    items = members.items() if isinstance(members, Mapping) else members
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in items:
            archive.writestr(zipfile.ZipInfo(name, _DATE), data, compression)
    data = buffer.getvalue()
    if path is not None:
        path.write_bytes(data)
    return data


def _assets(prefix: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}shared/style.css": STYLE_CSS,
        f"{prefix}shared/app.js": APP_JS,
        f"{prefix}shared/logo.png": PNG_1X1,
        f"{prefix}shared/blob.bin": ASSET_4K,
    }


def build_scorm12(
    path: Path | None = None,
    *,
    title: str = "Demo SCORM 1.2",
    prefix: str = "",
    launch: str = "sco/index.html",
    href: str | None = None,
) -> bytes:
    """A SCORM 1.2 package; entry is ``prefix + launch`` (``href`` may add ?query)."""
    members = {
        f"{prefix}imsmanifest.xml": SCORM12_MANIFEST.format(
            title=title, href=href or launch
        ).encode(),
        f"{prefix}{launch}": INDEX_HTML,
        **_assets(prefix),
    }
    return build_zip(members, path)


def build_scorm2004(
    path: Path | None = None, *, title: str = "Demo SCORM 2004", prefix: str = ""
) -> bytes:
    """A SCORM 2004 4th edition package; entry is ``prefix + content/launch.html``."""
    members = {
        f"{prefix}imsmanifest.xml": SCORM2004_MANIFEST.format(
            title=title, href="content/launch.html?mode=normal"
        ).encode(),
        f"{prefix}content/launch.html": INDEX_HTML,
        f"{prefix}other/index.html": b"<html><body>other</body></html>",
        **_assets(prefix),
    }
    return build_zip(members, path)


def build_html_package(path: Path | None = None, *, marker: bytes = b"") -> bytes:
    """A plain HTML package: index.html, css, js, png and a 4 KiB file.

    ``marker`` is appended to index.html so tests can make distinct packages.
    """
    members = {
        "index.html": INDEX_HTML + marker,
        "css/style.css": STYLE_CSS,
        "js/app.js": APP_JS,
        "img/logo.png": PNG_1X1,
        "data/blob.bin": ASSET_4K,
    }
    return build_zip(members, path)


# --- hazards -------------------------------------------------------------------------


def build_raw_names(names: Iterable[tuple[bytes, int]], data: bytes = b"x") -> bytes:
    """A stored zip whose member names are the raw ``bytes`` given, with the given flag
    bits (0x800 = UTF-8), bypassing zipfile's own encoding."""
    placeholders: list[tuple[bytes, bytes, int]] = []
    members = []
    for index, (raw, flags) in enumerate(names):
        # Same-length ASCII stand-ins, so the raw names can be patched in place.
        placeholder = str(index).rjust(len(raw), "_").encode()
        placeholders.append((placeholder, raw, flags))
        members.append((placeholder.decode(), data))
    blob = bytearray(build_zip(members, compression=zipfile.ZIP_STORED))
    for placeholder, raw, flags in placeholders:
        _rename_raw(blob, placeholder, raw, flags)
    return bytes(blob)


def _rename_raw(blob: bytearray, old: bytes, new: bytes, flags: int) -> None:
    """Replace a same-length name in the local and central headers and set its flags."""
    local, central = b"PK\x03\x04", b"PK\x01\x02"
    for signature, name_offset, flag_offset in ((local, 30, 6), (central, 46, 8)):
        start = 0
        while (start := blob.find(signature, start)) != -1:
            name_at = start + name_offset
            name_length = struct.unpack_from(
                "<H", blob, start + (26 if signature == local else 28)
            )[0]
            if bytes(blob[name_at : name_at + name_length]) == old:
                blob[name_at : name_at + name_length] = new
                old_flags = struct.unpack_from("<H", blob, start + flag_offset)[0]
                struct.pack_into("<H", blob, start + flag_offset, (old_flags & ~0x800) | flags)
                break
            start += 4


def set_flag_bits(data: bytes, member: str, bits: int) -> bytes:
    """Set general-purpose flag ``bits`` on ``member`` in both headers."""
    blob = bytearray(data)
    raw = member.encode()
    _rename_raw(blob, raw, raw, bits | _current_utf8(blob, raw))
    return bytes(blob)


def _current_utf8(blob: bytearray, raw: bytes) -> int:
    at = blob.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack_from("<H", blob, at + 28)[0]
        if bytes(blob[at + 46 : at + 46 + length]) == raw:
            return struct.unpack_from("<H", blob, at + 8)[0] & 0x800
        at = blob.find(b"PK\x01\x02", at + 4)
    return 0


def patch_uncompressed_size(data: bytes, member: str, size: int) -> bytes:
    """Make the headers lie: set ``member``'s uncompressed size in the local header and
    the central directory to ``size``."""
    blob = bytearray(data)
    raw = member.encode()
    for signature, size_offset, name_length_offset, name_offset in (
        (b"PK\x03\x04", 22, 26, 30),
        (b"PK\x01\x02", 24, 28, 46),
    ):
        at = blob.find(signature)
        while at != -1:
            length = struct.unpack_from("<H", blob, at + name_length_offset)[0]
            if bytes(blob[at + name_offset : at + name_offset + length]) == raw:
                struct.pack_into("<I", blob, at + size_offset, size)
                break
            at = blob.find(signature, at + 4)
    return bytes(blob)


def build_symlink(path: Path | None = None) -> bytes:
    """An HTML package plus a symlink member ``link`` pointing at /etc/passwd."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("index.html", _DATE), INDEX_HTML)
        link = zipfile.ZipInfo("link", _DATE)
        link.create_system = 3
        link.external_attr = (0o120777 << 16) & 0xFFFF0000
        archive.writestr(link, b"/etc/passwd")
    data = buffer.getvalue()
    if path is not None:
        path.write_bytes(data)
    return data


def build_zip_bomb(size: int = 50 * 1024 * 1024) -> bytes:
    """``size`` zeros deflated into one member (ratio ~1000x)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("index.html", _DATE), INDEX_HTML)
        zeros = zipfile.ZipInfo("zeros.bin", _DATE)
        zeros.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(zeros, "w", force_zip64=True) as member:
            chunk = bytes(1024 * 1024)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


def build_many_members(count: int) -> bytes:
    """``count`` empty stored members plus index.html, built fast."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("index.html", _DATE), INDEX_HTML)
        for index in range(count):
            archive.writestr(zipfile.ZipInfo(f"f/{index}", _DATE), b"")
    return buffer.getvalue()


def with_manifest(manifest: str | bytes, extra: Mapping[str, bytes] | None = None) -> bytes:
    """A zip holding ``imsmanifest.xml`` = ``manifest`` plus index.html and ``extra``."""
    body = manifest.encode() if isinstance(manifest, str) else manifest
    return build_zip({"imsmanifest.xml": body, "index.html": INDEX_HTML, **(extra or {})})


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<manifest xmlns="http://www.imsproject.org/xsd/imscp_rootv1p1p2"><metadata>&lol4;</metadata>
</manifest>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE manifest [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<manifest xmlns="http://www.imsproject.org/xsd/imscp_rootv1p1p2">
  <organizations><organization><title>&xxe;</title></organization></organizations>
</manifest>
"""

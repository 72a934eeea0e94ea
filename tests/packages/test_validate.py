"""Package validation: the hazard corpus (each hazard → its code) and the entry points."""

from __future__ import annotations

import io
import struct
import time
import zipfile
from collections.abc import Callable

import pytest

from safekeeper.errors import PackageRejected
from safekeeper.packages.validate import (
    PackageBudgets,
    PackageInfo,
    safe_member_path,
    validate_package,
)
from tests.packages import zips

BUDGETS = PackageBudgets()


def validate(data: bytes, budgets: PackageBudgets = BUDGETS) -> PackageInfo:
    return validate_package(io.BytesIO(data), budgets)


def rejected(data: bytes, budgets: PackageBudgets = BUDGETS) -> PackageRejected:
    with pytest.raises(PackageRejected) as caught:
        validate(data, budgets)
    return caught.value


def with_index(*members: tuple[str, bytes]) -> bytes:
    return zips.build_zip([("index.html", zips.INDEX_HTML), *members])


def scorm12_manifest(href: str) -> str:
    return zips.SCORM12_MANIFEST.format(title="T", href=href)


def corrupt_stored_byte() -> bytes:
    data = zips.build_zip([("index.html", b"A" * 100)], compression=zipfile.ZIP_STORED)
    return data.replace(b"A" * 100, b"B" + b"A" * 99, 1)


def local_name_differs() -> bytes:
    blob = bytearray(with_index(("other.html", b"x")))
    at = blob.find(b"other.html")  # the first occurrence is the local header's
    blob[at : at + 10] = b"evilx.html"
    return bytes(blob)


def overlapping_members() -> bytes:
    """Two central-directory entries whose data is the same local record."""
    blob = bytearray(with_index(("second.html", b"x" * 50)))
    central = blob.find(b"PK\x01\x02")
    second = blob.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", blob, second + 42, 0)  # header offset → index.html's record
    return bytes(blob)


HAZARDS: dict[str, tuple[Callable[[], bytes], str, str | None]] = {
    "traversal": (lambda: with_index(("../x", b"x")), "unsafe_path", "../x"),
    "absolute": (lambda: with_index(("/etc/x", b"x")), "unsafe_path", "/etc/x"),
    "drive-backslash": (lambda: with_index(("C:\\x", b"x")), "unsafe_path", "C:\\x"),
    "drive-slash": (lambda: with_index(("C:/x", b"x")), "unsafe_path", "C:/x"),
    "backslash-traversal": (lambda: with_index(("..\\x", b"x")), "unsafe_path", "..\\x"),
    "deep-traversal": (lambda: with_index(("a/../../x", b"x")), "unsafe_path", "a/../../x"),
    "inner-dotdot": (lambda: with_index(("a/../b", b"x")), "unsafe_path", "a/../b"),
    "nul": (
        lambda: zips.build_raw_names([(b"index.html", 0), (b"a\x00b.html", 0)]),
        "unsafe_path",
        "a\\0b.html",
    ),
    "symlink": (zips.build_symlink, "symlink_member", "link"),
    "encrypted": (
        lambda: zips.set_flag_bits(zips.build_html_package(), "css/style.css", 0x1),
        "encrypted_member",
        "css/style.css",
    ),
    "duplicate-exact": (
        lambda: with_index(("a/b", b"1"), ("a/b", b"2")),
        "duplicate_member",
        "a/b",
    ),
    "duplicate-double-slash": (
        lambda: with_index(("a/b", b"1"), ("a//b", b"2")),
        "duplicate_member",
        "a//b",
    ),
    "duplicate-dot-segment": (
        lambda: with_index(("a/b", b"1"), ("./a/b", b"2")),
        "duplicate_member",
        "./a/b",
    ),
    "duplicate-unicode-forms": (
        lambda: with_index(("caf\u00e9.html", b"1"), ("cafe\u0301.html", b"2")),
        "duplicate_member",
        "cafe\u0301.html",
    ),
    # Names the cache could never create (ENAMETOOLONG): refused here, not a 500 on play.
    "name-part-too-long": (lambda: with_index(("a" * 256, b"x")), "unsafe_path", "a" * 200),
    "path-too-long": (lambda: with_index(("d/" * 600 + "x", b"x")), "unsafe_path", "d/" * 100),
    "file-and-folder": (lambda: with_index(("a", b"1"), ("a/b", b"2")), "duplicate_member", "a"),
    "bad-utf8-name": (
        lambda: zips.build_raw_names([(b"index.html", 0), (b"\xff\xfe.html", 0x800)]),
        "bad_member_name",
        "\\xff\\xfe.html",
    ),
    "local-name-differs": (local_name_differs, "bad_member_name", "other.html"),
    "zip-bomb": (zips.build_zip_bomb, "compression_ratio", "zeros.bin"),
    "lying-size-small": (
        lambda: zips.patch_uncompressed_size(zips.build_html_package(), "data/blob.bin", 100),
        "size_mismatch",
        "data/blob.bin",
    ),
    "lying-size-large": (
        lambda: zips.patch_uncompressed_size(zips.build_html_package(), "data/blob.bin", 5000),
        "size_mismatch",
        "data/blob.bin",
    ),
    "lying-bomb": (
        lambda: zips.patch_uncompressed_size(zips.build_zip_bomb(), "zeros.bin", 1000),
        "size_mismatch",
        "zeros.bin",
    ),
    "crc": (corrupt_stored_byte, "crc_mismatch", "index.html"),
    "bzip2": (
        lambda: zips.build_zip([("index.html", b"x")], compression=zipfile.ZIP_BZIP2),
        "unsupported_compression",
        "index.html",
    ),
    "overlap": (overlapping_members, "not_a_zip", "second.html"),
    "not-a-zip": (lambda: b"hello, not a zip", "not_a_zip", None),
    "empty-file": (lambda: b"", "not_a_zip", None),
    "truncated": (lambda: zips.build_html_package()[:-30], "not_a_zip", None),
    "billion-laughs": (
        lambda: zips.with_manifest(zips.BILLION_LAUGHS),
        "manifest_unsafe",
        "imsmanifest.xml",
    ),
    "external-entity": (
        lambda: zips.with_manifest(zips.EXTERNAL_ENTITY),
        "manifest_unsafe",
        "imsmanifest.xml",
    ),
    "manifest-broken-xml": (
        lambda: zips.with_manifest("<manifest><resources>"),
        "manifest_invalid",
        "imsmanifest.xml",
    ),
    "manifest-wrong-root": (
        lambda: zips.with_manifest("<html/>"),
        "manifest_invalid",
        "imsmanifest.xml",
    ),
    "manifest-no-launch": (
        # No item, no resource href and no index.html (with one, that launches).
        lambda: zips.build_zip(
            {
                "imsmanifest.xml": b'<manifest xmlns="http://www.imsproject.org/xsd/'
                b'imscp_rootv1p1p2"><resources/></manifest>',
                "page.html": b"x",
            }
        ),
        "manifest_invalid",
        "imsmanifest.xml",
    ),
    "ambiguous-manifest": (
        lambda: zips.build_zip(
            {
                "a/imsmanifest.xml": scorm12_manifest("index.html").encode(),
                "a/index.html": b"a",
                "b/imsmanifest.xml": scorm12_manifest("index.html").encode(),
                "b/index.html": b"b",
            }
        ),
        "ambiguous_manifest",
        "a/imsmanifest.xml",
    ),
    "launch-missing": (
        lambda: zips.with_manifest(scorm12_manifest("missing.html")),
        "launch_missing",
        "imsmanifest.xml",
    ),
    "launch-outside": (
        lambda: zips.with_manifest(scorm12_manifest("../index.html")),
        "launch_missing",
        "imsmanifest.xml",
    ),
    "launch-external": (
        lambda: zips.with_manifest(scorm12_manifest("https://example.com/x.html")),
        "launch_missing",
        "imsmanifest.xml",
    ),
    "no-entry-point": (
        lambda: zips.build_zip({"css/style.css": b"x", "site/index.html": b"y"}),
        "no_entry_point",
        None,
    ),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("hazard", sorted(HAZARDS))
def test_each_hazard_is_rejected_with_its_code(hazard: str) -> None:
    build, code, member = HAZARDS[hazard]
    error = rejected(build())
    assert (error.code, error.member) == (code, member)
    if member is not None:
        assert member in str(error)


def test_no_entry_point_hints_at_a_zipped_folder() -> None:
    error = rejected(zips.build_zip({"site/index.html": b"y"}))
    assert "site/index.html" in str(error)


def test_too_many_members_is_rejected_from_the_directory_fast() -> None:
    data = zips.build_many_members(60_000)
    started = time.monotonic()
    error = rejected(data)
    assert error.code == "too_many_members" and "60001" in str(error)
    assert time.monotonic() - started < 5
    assert validate(zips.build_many_members(10)).member_count == 11


def test_budgets_are_configurable() -> None:
    package = zips.build_html_package()
    assert rejected(package, PackageBudgets(max_members=3)).code == "too_many_members"
    error = rejected(package, PackageBudgets(max_extracted_size=1000))
    assert error.code == "too_large" and error.member is not None
    # 2 MiB of zeros: ~1000x, over a 200x budget but under a 5000x one
    zeros = zips.build_zip({"index.html": bytes(2 * 1024 * 1024)})
    assert rejected(zeros).code == "compression_ratio"
    assert validate(zeros, PackageBudgets(max_compression_ratio=5000)).extracted_size == 2 << 20


def test_small_files_may_compress_well() -> None:
    # 100 KB of zeros deflates ~1000x, but below the ratio floor it cannot hurt anyone
    info = validate(with_index(("zeros.bin", bytes(100_000))))
    assert info.extracted_size == 100_000 + len(zips.INDEX_HTML)


def test_case_differences_are_two_files() -> None:
    info = validate(with_index(("A.css", b"1"), ("a.css", b"2")))
    assert info.member_count == 3


def test_folder_entries_are_not_counted_as_files() -> None:
    data = zips.build_zip([("css/", b""), ("index.html", b"x"), ("css/a.css", b"y")])
    assert validate(data).member_count == 2


def test_cp437_names_are_decoded_without_the_utf8_flag() -> None:
    manifest = scorm12_manifest("café.html").encode()  # the manifest itself is UTF-8
    data = zips.build_zip([("imsmanifest.xml", manifest), ("cafX.html", b"page")])
    # cp437 0x82 is é; the UTF-8 flag stays clear, as an old zip tool would write it
    rebuilt = data.replace(b"cafX.html", b"caf\x82.html")
    info = validate(rebuilt)
    assert (info.kind, info.entry) == ("scorm12", "café.html")


def test_scorm12() -> None:
    info = validate(zips.build_scorm12())
    assert info == PackageInfo(
        "scorm12", "sco/index.html", "Demo SCORM 1.2", 6, info.extracted_size
    )
    assert info.extracted_size == len(zips.INDEX_HTML) + sum(
        len(d) for d in (zips.STYLE_CSS, zips.APP_JS, zips.PNG_1X1, zips.ASSET_4K)
    ) + len(zips.SCORM12_MANIFEST.format(title="Demo SCORM 1.2", href="sco/index.html"))


def test_scorm2004_uses_the_default_organization_and_drops_the_query() -> None:
    info = validate(zips.build_scorm2004())
    assert (info.kind, info.entry, info.title) == (
        "scorm2004",
        "content/launch.html",
        "Demo SCORM 2004",
    )


def test_manifest_in_a_nested_folder_makes_that_folder_the_root() -> None:
    info = validate(zips.build_scorm12(prefix="course/"))
    assert (info.kind, info.entry) == ("scorm12", "course/sco/index.html")


def test_the_shallowest_manifest_wins_by_depth_not_by_length() -> None:
    long_folder = "a-folder-with-a-really-long-name"
    data = zips.build_zip(
        {
            f"{long_folder}/imsmanifest.xml": scorm12_manifest("start.html").encode(),
            f"{long_folder}/start.html": b"top",
            "a/b/imsmanifest.xml": scorm12_manifest("deep.html").encode(),
            "a/b/deep.html": b"deep",
        }
    )
    assert validate(data).entry == f"{long_folder}/start.html"


def test_plain_html_package() -> None:
    info = validate(zips.build_html_package())
    assert (info.kind, info.entry, info.title, info.member_count) == (
        "html",
        "index.html",
        "Demo course",
        5,
    )


def test_sco_resource_fallback_and_version_from_namespaces() -> None:
    manifest = """<?xml version="1.0"?>
<manifest xmlns="http://www.imsglobal.org/xsd/imscp_v1p1"
  xmlns:adlcp="http://www.adlnet.org/xsd/adlcp_v1p3">
  <organizations/>
  <resources>
    <resource identifier="asset" type="webcontent" adlcp:scormType="asset" href="a.html"/>
    <resource identifier="sco" type="webcontent" adlcp:scormType="sco"
      href="my%20page.html#start"/>
  </resources>
</manifest>"""
    info = validate(zips.with_manifest(manifest, {"my page.html": b"x", "a.html": b"y"}))
    assert (info.kind, info.entry, info.title) == ("scorm2004", "my page.html", None)


def test_xml_base_is_applied_to_the_launch_href() -> None:
    manifest = """<manifest xmlns="http://www.imsproject.org/xsd/imscp_rootv1p1p2"
  xmlns:adlcp="http://www.adlnet.org/xsd/adlcp_rootv1p2">
  <organizations default="o"><organization identifier="o"><title>B</title>
    <item identifier="i" identifierref="r"/></organization></organizations>
  <resources xml:base="content/"><resource identifier="r" xml:base="unit1/"
    adlcp:scormtype="sco" href="go.html"/></resources>
</manifest>"""
    info = validate(zips.with_manifest(manifest, {"content/unit1/go.html": b"x"}))
    assert (info.kind, info.entry, info.title) == ("scorm12", "content/unit1/go.html", "B")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("a/./b", "a/b"),
        ("dir/", "dir"),
        ("Ünïcode/页面.html", "Ünïcode/页面.html"),
    ],
)
def test_safe_member_path_normalises(name: str, expected: str) -> None:
    assert safe_member_path(name) == expected


@pytest.mark.parametrize("name", ["", "./", "/a", "../a", "a/..", "a\\b", "a\x00", "c:x", "//"])
def test_safe_member_path_refuses(name: str) -> None:
    with pytest.raises(PackageRejected) as caught:
        safe_member_path(name)
    assert caught.value.code == "unsafe_path"

"""Launch resolution, as lenient as the systems packages come from: organization →
item → identifierref → resource href; else the first SCO resource with an href, then
the first resource with one (what the Open edX SCORM XBlock launches); else the
index.html beside the manifest, then at the top. Multi-SCO: every launchable item of
the default organization, in order."""

from __future__ import annotations

import io

import pytest

from safekeeper.errors import PackageRejected
from safekeeper.packages.manifest import parse_manifest
from safekeeper.packages.validate import PackageBudgets, validate_package
from tests.packages import zips

NS = (
    'xmlns="http://www.imsproject.org/xsd/imscp_rootv1p1p2" '
    'xmlns:adlcp="http://www.adlnet.org/xsd/adlcp_rootv1p2"'
)


def manifest(organizations: str, resources: str) -> bytes:
    return f"<manifest {NS}>{organizations}<resources>{resources}</resources></manifest>".encode()


def org(items: str, identifier: str = "o", title: str = "Course") -> str:
    return f'<organization identifier="{identifier}"><title>{title}</title>{items}</organization>'


def default_org(items: str) -> str:
    return f'<organizations default="o">{org(items)}</organizations>'


def item(identifier: str, ref: str | None, inner: str = "") -> str:
    ref_attr = f' identifierref="{ref}"' if ref else ""
    return f'<item identifier="{identifier}"{ref_attr}><title>{identifier}</title>{inner}</item>'


def res(identifier: str, href: str | None, kind: str = "sco") -> str:
    href_attr = f' href="{href}"' if href else ""
    scorm_type = f'adlcp:scormtype="{kind}"'
    return f'<resource identifier="{identifier}" type="webcontent" {scorm_type}{href_attr}/>'


PAGES = {"a.html": b"a", "b.html": b"b", "c.html": b"c", "index.html": b"i"}

CASES: dict[str, tuple[str, dict[str, bytes], str, list[str]]] = {
    # name: (manifest path, members besides it, expected entry, expected item hrefs)
    "organization item resource": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                f'<organizations default="o">{org(item("i1", "r2"))}</organizations>',
                res("r1", "a.html") + res("r2", "b.html"),
            )
        }
        | PAGES,
        "b.html",
        ["b.html"],
    ),
    "empty organizations: first SCO": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                "<organizations/>", res("r1", "a.html", "asset") + res("r2", "b.html")
            )
        }
        | PAGES,
        "b.html",
        [],
    ),
    "empty organizations, assets only: first resource with an href": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                "<organizations/>",
                res("r0", None, "asset")
                + res("r1", "c.html", "asset")
                + res("r2", "a.html", "asset"),
            )
        }
        | PAGES,
        "c.html",
        [],
    ),
    "no organizations element": (
        "imsmanifest.xml",
        {"imsmanifest.xml": manifest("", res("r1", "a.html", "asset"))} | PAGES,
        "a.html",
        [],
    ),
    "items naming nothing: the resources": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                default_org(item("i1", "gone") + item("i2", "r0")),
                res("r0", None) + res("r1", "c.html"),
            )
        }
        | PAGES,
        "c.html",
        [],
    ),
    "first item names nothing, the second launches": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                default_org(item("i1", "gone") + item("i2", "r1")),
                res("r1", "a.html"),
            )
        }
        | PAGES,
        "a.html",
        ["a.html"],
    ),
    "no href anywhere: index.html": (
        "imsmanifest.xml",
        {"imsmanifest.xml": manifest("<organizations/>", res("r1", None))} | PAGES,
        "index.html",
        [],
    ),
    "nested root: hrefs relative to the manifest": (
        "course/imsmanifest.xml",
        {
            "course/imsmanifest.xml": manifest(
                f'<organizations default="o">{org(item("i1", "r1"))}</organizations>',
                res("r1", "sco/a.html"),
            ),
            "course/sco/a.html": b"a",
        },
        "course/sco/a.html",
        ["sco/a.html"],
    ),
    "nested root without hrefs: the index beside the manifest": (
        "course/imsmanifest.xml",
        {
            "course/imsmanifest.xml": manifest("<organizations/>", ""),
            "course/index.html": b"i",
            "index.html": b"top",
        },
        "course/index.html",
        [],
    ),
    "nested root, index only at the top": (
        "course/imsmanifest.xml",
        {"course/imsmanifest.xml": manifest("<organizations/>", ""), "index.html": b"top"},
        "index.html",
        [],
    ),
    "no default: the first organization": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                f"<organizations>{org(item('i1', 'r1'), 'o1')}{org(item('i2', 'r2'), 'o2')}"
                "</organizations>",
                res("r1", "a.html") + res("r2", "b.html"),
            )
        }
        | PAGES,
        "a.html",
        ["a.html"],
    ),
    "the default names the second organization": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                f'<organizations default="o2">{org(item("i1", "r1"), "o1")}'
                f"{org(item('i2', 'r2'), 'o2')}</organizations>",
                res("r1", "a.html") + res("r2", "b.html"),
            )
        }
        | PAGES,
        "b.html",
        ["b.html"],
    ),
    "multi-SCO, nested items: every leaf in order": (
        "imsmanifest.xml",
        {
            "imsmanifest.xml": manifest(
                '<organizations default="o">'
                + org(item("module", None, item("i1", "r1") + item("i2", "r2")) + item("i3", "r3"))
                + "</organizations>",
                res("r1", "a.html") + res("r2", "b.html") + res("r3", "c.html"),
            )
        }
        | PAGES,
        "a.html",
        ["a.html", "b.html", "c.html"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_launch_resolution(name: str) -> None:
    manifest_path, members, entry, item_hrefs = CASES[name]
    info = validate_package(io.BytesIO(zips.build_zip(members)), PackageBudgets())
    assert info.entry == entry
    parsed = parse_manifest(members[manifest_path], manifest_path)
    assert [i.href for i in parsed.items] == item_hrefs


def test_item_parameters_reach_the_item_not_the_entry() -> None:
    with_parameters = item("i1", "r1").replace("<item ", '<item parameters="?page=2" ')
    data = manifest(
        f'<organizations default="o">{org(with_parameters)}</organizations>',
        res("r1", "a.html#top"),
    )
    parsed = parse_manifest(data, "imsmanifest.xml")
    assert parsed.href == "a.html" and parsed.items[0].href == "a.html?page=2"


def test_no_page_at_all_is_refused() -> None:
    data = zips.build_zip({"imsmanifest.xml": manifest("<organizations/>", ""), "x.html": b"x"})
    with pytest.raises(PackageRejected) as refused:
        validate_package(io.BytesIO(data), PackageBudgets())
    assert refused.value.code == "manifest_invalid"

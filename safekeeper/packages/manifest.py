"""SCORM ``imsmanifest.xml``: the launch href, the SCORM version and the title.

The manifest comes from an untrusted upload, so it is parsed with defusedxml and any
DTD is refused outright: no entity expansion (billion laughs), no external entities
(XXE). Element and attribute names are matched by local name, because real packages
disagree on prefixes and sometimes on namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from xml.etree.ElementTree import Element, ParseError

from defusedxml.common import DefusedXmlException
from defusedxml.ElementTree import fromstring

from safekeeper.errors import PackageRejected

#: A manifest larger than this is not a manifest anyone wrote by hand or tool.
MAX_MANIFEST_SIZE = 16 * 1024 * 1024

ScormVersion = Literal["scorm12", "scorm2004"]

# Namespace fragments of the SCORM 1.2 and 2004 content-packaging and ADL schemas.
_SCORM12_NAMESPACES = ("imscp_rootv1p1p2", "adlcp_rootv1p2")
_SCORM2004_NAMESPACES = ("imscp_v1p1", "adlcp_v1p3", "adlseq_v1p3", "adlnav_v1p3", "imsss")


@dataclass(frozen=True)
class Item:
    """A launchable item of the default organization (a SCO or an asset)."""

    identifier: str
    title: str | None
    #: Relative to the package root like ``ManifestInfo.href``.
    href: str
    #: ``adlcp:datafromlms`` (SCORM 1.2 ``cmi.launch_data``), if any.
    launch_data: str | None = None


@dataclass(frozen=True)
class ManifestInfo:
    kind: ScormVersion
    #: The launch href relative to the package root, query and fragment removed; None
    #: when no item and no resource has an href (the package's index.html launches).
    href: str | None
    title: str | None
    #: The default organization's launchable items, in order (multi-SCO packages).
    items: tuple[Item, ...] = ()


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _namespace(name: str) -> str:
    return name[1:].split("}", 1)[0] if name.startswith("{") else ""


def _children(element: Element, local_name: str) -> list[Element]:
    return [child for child in element if _local(child.tag) == local_name]


def _first(element: Element, local_name: str) -> Element | None:
    found = _children(element, local_name)
    return found[0] if found else None


def _attribute(element: Element, local_name: str) -> str | None:
    for name, value in element.attrib.items():
        if _local(name).lower() == local_name.lower():
            return value
    return None


def _text(element: Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def parse_manifest(data: bytes, member: str) -> ManifestInfo:
    """Read the manifest ``member``; raise PackageRejected (``manifest_unsafe`` or
    ``manifest_invalid``) naming it."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise PackageRejected(
            "manifest_invalid", f"{member}: manifest larger than {MAX_MANIFEST_SIZE} bytes", member
        )
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise PackageRejected(
            "manifest_unsafe",
            f"{member}: manifest uses a DTD, entities or external references ({exc}); "
            "these are refused",
            member,
        ) from exc
    except (ParseError, ValueError) as exc:
        raise PackageRejected(
            "manifest_invalid", f"{member}: manifest is not well-formed XML ({exc})", member
        ) from exc
    if _local(root.tag) != "manifest":
        raise PackageRejected(
            "manifest_invalid",
            f"{member}: root element is <{_local(root.tag)}>, not <manifest>",
            member,
        )
    href, title, items = _launch(root)
    return ManifestInfo(_version(root, member), href, title, items)


def _version(root: Element, member: str) -> ScormVersion:
    metadata = _first(root, "metadata")
    declared = _text(_first(metadata, "schemaversion")) if metadata is not None else None
    if declared is not None:
        if declared == "1.2":
            return "scorm12"
        if "2004" in declared or "1.3" in declared:
            return "scorm2004"
    namespaces = {_namespace(e.tag) for e in root.iter()}
    namespaces.update(_namespace(name) for e in root.iter() for name in e.attrib)
    if any(fragment in ns for ns in namespaces for fragment in _SCORM2004_NAMESPACES):
        return "scorm2004"
    if any(fragment in ns for ns in namespaces for fragment in _SCORM12_NAMESPACES):
        return "scorm12"
    raise PackageRejected(
        "manifest_invalid",
        f"{member}: cannot tell the SCORM version (schemaversion {declared!r}, no SCORM namespace)",
        member,
    )


def _launch(root: Element) -> tuple[str | None, str | None, tuple[Item, ...]]:
    """(launch href, title, items), as leniently as the systems packages come from:
    the default organization's (else the first organization's) first item whose
    identifierref names a resource with an href; when there is none (no or empty
    organizations, items naming nothing), the first SCO resource with an href, then
    the first resource with one (what the Open edX SCORM XBlock launches); None when
    no resource has an href (the caller falls back to index.html)."""
    resources_element = _first(root, "resources")
    resources = _children(resources_element, "resource") if resources_element is not None else []
    by_identifier = {r.get("identifier"): r for r in resources if r.get("identifier")}
    base = _xml_base(resources_element)

    organizations = _first(root, "organizations")
    title: str | None = None
    items: list[Item] = []
    if organizations is not None:
        candidates = _children(organizations, "organization")
        default = organizations.get("default")
        chosen = next((o for o in candidates if o.get("identifier") == default), None)
        if chosen is None and candidates:
            chosen = candidates[0]
        if chosen is not None:
            title = _text(_first(chosen, "title"))
            for item in chosen.iter():
                if _local(item.tag) != "item" or not item.get("identifierref"):
                    continue
                resource = by_identifier.get(item.get("identifierref"))
                if resource is None or not resource.get("href"):
                    continue
                href = _href(base, resource, item.get("parameters"))
                data = _first(item, "datafromlms")
                items.append(
                    Item(
                        item.get("identifier") or href,
                        _text(_first(item, "title")),
                        href,
                        _text(data),
                    )
                )
    if items:
        return _without_query(items[0].href), title, tuple(items)
    with_href = [r for r in resources if r.get("href")]
    scos = [r for r in with_href if (_attribute(r, "scormtype") or "").lower() == "sco"]
    for resource in (*scos, *with_href):
        return _without_query(_href(base, resource)), title, ()
    return None, title, ()


def _xml_base(element: Element | None) -> str:
    if element is None:
        return ""
    return element.get("{http://www.w3.org/XML/1998/namespace}base") or ""


def _href(base: str, resource: Element, parameters: str | None = None) -> str:
    """``xml:base`` of resources and resource, then the href, with the item's
    ``parameters`` (a query or fragment the content reads); fragments are dropped."""
    href = _xml_base(resource) + (resource.get("href") or "")
    href = base + href if base and "://" not in href else href
    href = href.split("#", 1)[0]
    if parameters:
        parameters = parameters.strip().lstrip("?&")
        if parameters and not parameters.startswith("#"):
            href += ("&" if "?" in href else "?") + parameters
    return href


def _without_query(href: str) -> str:
    """A member path has no query."""
    return href.split("?", 1)[0]

"""Identifiers: blob ids and reference specs, parsed once at the edge."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from safekeeper.errors import BadInput

BLOB_ID_LENGTH = 64
_BLOB_ID = re.compile(r"[0-9a-f]{64}")
MAX_NAME_LENGTH = 200
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
# Keys may contain slashes (paths in an application) but not empty segments or dot segments.
# ``%`` is allowed so that any file name has an addressable key (``path_key``).
_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@+ -"
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9._@+ %-]+")
#: Characters per key segment, and per whole key (the ``refs.key`` column).
MAX_KEY_SEGMENT = 200
MAX_KEY_LENGTH = 1000
DEFAULT_LABEL = "default"


def parse_blob_id(text: str) -> str:
    """Return ``text`` as a canonical blob id, or raise BadInput."""
    candidate = text.strip().lower()
    if not _BLOB_ID.fullmatch(candidate):
        raise BadInput(f"not a blob id (64 hex characters of SHA-256): {text!r}")
    return candidate


def is_blob_id(text: str) -> bool:
    return bool(_BLOB_ID.fullmatch(text))


def check_name(kind: str, text: str) -> str:
    if len(text) > MAX_NAME_LENGTH:
        raise BadInput(
            f"bad {kind} {_shorten(text)}: {len(text)} characters, the limit is {MAX_NAME_LENGTH}"
        )
    if not _NAME.fullmatch(text):
        raise BadInput(
            f"bad {kind} {text!r}: use letters, digits and . _ @ + - (starting with a letter "
            f"or digit, at most {MAX_NAME_LENGTH} characters)"
        )
    return text


#: Separates a tenant's name from the rest of a namespace named for it (``acme.course-1``).
#: Tenant names cannot contain it, so ``<tenant>.`` names exactly one tenant's namespaces.
TENANT_SEPARATOR = "."


def check_tenant_name(text: str) -> str:
    check_name("tenant", text)
    if TENANT_SEPARATOR in text:
        raise BadInput(
            f"bad tenant {text!r}: a tenant's name cannot contain {TENANT_SEPARATOR!r} "
            f"(it separates the tenant from the rest of its namespaces' names, "
            f"like {text.replace(TENANT_SEPARATOR, '-')}{TENANT_SEPARATOR}docs)"
        )
    return text


def check_key(text: str) -> str:
    if len(text) > MAX_KEY_LENGTH:
        raise BadInput(
            f"bad reference key {_shorten(text)}: {len(text)} characters, "
            f"the limit is {MAX_KEY_LENGTH}"
        )
    for segment in text.split("/"):
        if len(segment) > MAX_KEY_SEGMENT:
            raise BadInput(
                f"bad reference key {_shorten(text)}: a segment of {len(segment)} characters, "
                f"the limit is {MAX_KEY_SEGMENT} between slashes"
            )
        if segment in ("", ".", "..") or not _KEY_SEGMENT.fullmatch(segment):
            raise BadInput(
                f"bad reference key {text!r}: slash-separated segments of letters, digits, "
                "spaces and . _ @ + - %, no empty, '.' or '..' segments"
            )
    return text


def _shorten(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def encode_key_segment(name: str) -> str:
    """A file name as a key segment: every byte outside the key alphabet (and ``%``)
    becomes ``%XX`` of its UTF-8 encoding — or of the raw byte, for a name that is not
    valid UTF-8 (``os.fsdecode``'s surrogate escapes). Reversible, so two names never
    share a key; ``Résumé.pdf`` → ``R%C3%A9sum%C3%A9.pdf``, ``a:b`` → ``a%3Ab``."""
    raw = name.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if chr(b) in _KEY_CHARS else f"%{b:02X}" for b in raw)


def path_key(path: str) -> str:
    """The reference key of a path as given on a command line: normalised
    (``./a//b`` → ``a/b``), each segment encoded by ``encode_key_segment``. A path that
    leaves the current directory (absolute, or with ``..``) is keyed by its absolute
    path without the leading ``/``. ``.`` gives the empty string: the caller joins and
    checks the final key (``check_key``)."""
    normal = os.path.normpath(path)
    if os.path.isabs(normal) or normal == ".." or normal.startswith("../"):
        normal = os.path.abspath(normal)
    segments = [s for s in normal.split("/") if s not in ("", ".")]
    return "/".join(encode_key_segment(s) for s in segments)


@dataclass(frozen=True, order=True)
class RefSpec:
    """``NAMESPACE:KEY[:LABEL]`` — one application use of a blob."""

    namespace: str
    key: str
    label: str = DEFAULT_LABEL

    def __str__(self) -> str:
        return f"{self.namespace}:{self.key}:{self.label}"


def parse_ref(text: str, *, label_required: bool = False) -> RefSpec:
    """Parse ``NAMESPACE:KEY[:LABEL]``; raise BadInput with the expected form."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or (label_required and len(parts) != 3):
        form = "NAMESPACE:KEY:LABEL" if label_required else "NAMESPACE:KEY[:LABEL]"
        raise BadInput(f"bad reference {text!r}: expected {form}")
    namespace = check_name("namespace", parts[0])
    key = check_key(parts[1])
    label = check_name("label", parts[2]) if len(parts) == 3 else DEFAULT_LABEL
    return RefSpec(namespace, key, label)

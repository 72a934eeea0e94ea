"""Identifiers: blob ids and reference specs, parsed once at the edge."""

from __future__ import annotations

import re
from dataclasses import dataclass

from safekeeper.errors import BadInput

BLOB_ID_LENGTH = 64
_BLOB_ID = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}")
# Keys may contain slashes (paths in an application) but not empty segments or dot segments.
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9._@+ -]{1,200}")
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
    if not _NAME.fullmatch(text):
        raise BadInput(
            f"bad {kind} {text!r}: use letters, digits and . _ @ + - (starting with a letter "
            "or digit, at most 200 characters)"
        )
    return text


def check_key(text: str) -> str:
    segments = text.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _KEY_SEGMENT.fullmatch(segment):
            raise BadInput(
                f"bad reference key {text!r}: slash-separated segments of letters, digits, "
                "spaces and . _ @ + -, no empty, '.' or '..' segments"
            )
    return text


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

"""``Range: bytes=…`` for blob downloads and package members: one parser."""

from __future__ import annotations

import re
from typing import Literal

#: ASCII digits only: ``\d`` and ``str.isdigit`` take digits ``int`` refuses ("²").
_BYTE_RANGE = re.compile(r"([0-9]*)[ \t]*-[ \t]*([0-9]*)", re.ASCII)
#: Past this many digits a position is beyond any object (and ``int`` refuses over 4,300).
_MAX_DIGITS = 18


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def byte_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """One ``bytes=`` range of an object of ``size`` bytes as (first, last) inclusive;
    "unsatisfiable" (416) when it starts past the end; None: send the whole object (no
    header, several ranges, or a malformed one — RFC 9110 lets a server ignore those)."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    found = _BYTE_RANGE.fullmatch(spec.strip())
    if found is None:
        return None
    first, last = found.group(1), found.group(2)
    if first == "":
        if last == "":
            return None
        suffix = _position(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = _position(first)
    if last != "" and _position(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if last == "" else min(_position(last), size - 1)

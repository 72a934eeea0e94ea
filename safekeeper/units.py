"""Human-friendly sizes and durations used in configuration and on the command line."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from safekeeper.errors import BadInput

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
    "p": 1000**5, "pb": 1000**5, "pib": 1024**5, "pi": 1024**5,
}  # fmt: skip
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|w|d|h|m|s)", re.IGNORECASE)
_DURATION_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def parse_size(text: str | int) -> int:
    """``"10GiB"`` → 10737418240; plain integers are bytes."""
    if isinstance(text, int):
        if text < 0:
            raise BadInput(f"size must not be negative: {text}")
        return text
    match = _SIZE.fullmatch(text)
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _SIZE_FACTORS:
        raise BadInput(f"bad size {text!r}: use bytes or a unit such as 500MB, 10GiB")
    return int(float(match.group(1)) * _SIZE_FACTORS[unit])


def parse_duration(text: str | int | float) -> timedelta:
    """``"7d"``, ``"1h30m"``, ``"90s"``; plain numbers are seconds."""
    try:
        if isinstance(text, int | float):
            if text < 0:
                raise BadInput(f"duration must not be negative: {text}")
            return timedelta(seconds=text)
        stripped = text.replace(" ", "")
        if stripped.isdigit():
            return timedelta(seconds=int(stripped))
        parts = _DURATION.findall(stripped)
        if not parts or "".join(n + u for n, u in parts) != stripped:
            raise BadInput(f"bad duration {text!r}: use e.g. 90s, 30m, 12h, 7d, 2w, 1h30m")
        return timedelta(seconds=sum(float(n) * _DURATION_SECONDS[u.lower()] for n, u in parts))
    except OverflowError:
        raise BadInput(f"duration {text!r} is too long") from None


def ago(now: datetime, text: str) -> datetime:
    """The moment ``text`` (a duration) before ``now``; BadInput past the calendar."""
    duration = parse_duration(text)
    try:
        return now - duration
    except OverflowError:
        raise BadInput(f"{text!r} ago is before the calendar starts") from None


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(value: timedelta) -> str:
    """``timedelta(seconds=1)`` → ``"1 s"``; ``5400 s`` → ``"1 h 30 min"``; ``7 d``.
    The two largest units, rounded down; under a second in ms."""
    seconds = value.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f} ms"
    remaining = int(seconds)
    parts: list[tuple[int, str]] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count or parts:
            parts.append((count, unit))
    shown = [f"{count} {unit}" for count, unit in parts[:2] if count]
    return sign + " ".join(shown)

"""SCORM runtime data as the server keeps it: pure functions over what a commit sends.

The player's runtime (``api/player/runtime.js``) enforces the data model towards the
content (error codes, types, read-only and write-only elements); a commit then sends
every element it holds. The content runs in the viewer's browser and can send
anything to its own attempt, so the server re-checks shape and size here and keeps
only data model names (``cmi.…``, ``adl.nav.request``), never read-only ones it
computes itself; the summary columns (status, score, time) come from those values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from safekeeper.errors import BadInput

Version = Literal["scorm12", "scorm2004"]

MAX_ELEMENTS = 5000
MAX_NAME = 255
MAX_VALUE = 64_000
MAX_TOTAL = 2 * 1024 * 1024

_NAME = re.compile(r"^(cmi\.[a-z_]+(\.([a-z_]+|\d{1,5}))*|adl\.nav\.request)$")
#: Computed by the server or fixed: never taken from a commit.
_READ_ONLY = frozenset(
    {
        "cmi.core.student_id",
        "cmi.core.student_name",
        "cmi.core.credit",
        "cmi.core.entry",
        "cmi.core.total_time",
        "cmi.core.lesson_mode",
        "cmi.launch_data",
        "cmi.comments_from_lms",
        "cmi._version",
        "cmi.credit",
        "cmi.entry",
        "cmi.learner_id",
        "cmi.learner_name",
        "cmi.mode",
        "cmi.total_time",
        "cmi.completion_threshold",
        "cmi.max_time_allowed",
        "cmi.scaled_passing_score",
        "cmi.time_limit_action",
    }
)


@dataclass(frozen=True)
class Summary:
    completion_status: str | None
    success_status: str | None
    score_raw: float | None
    score_max: float | None
    score_scaled: float | None


def checked_data(raw: Any) -> dict[str, str]:
    """The elements of a commit worth keeping; BadInput for a malformed or oversized one."""
    if not isinstance(raw, dict):
        raise BadInput("runtime data must be an object of element → value")
    if len(raw) > MAX_ELEMENTS:
        raise BadInput(f"more than {MAX_ELEMENTS} data model elements")
    kept: dict[str, str] = {}
    total = 0
    for name, value in raw.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise BadInput("runtime data must map element names to strings")
        if len(name) > MAX_NAME or len(value) > MAX_VALUE:
            raise BadInput(f"{name[:80]!r}: name or value too long")
        total += len(name) + len(value)
        if total > MAX_TOTAL:
            raise BadInput(f"runtime data larger than {MAX_TOTAL} characters")
        if (
            _NAME.match(name)
            and name not in _READ_ONLY
            and not name.endswith(("_children", "_count"))
        ):
            kept[name] = value
    return kept


def _number(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def summary(version: Version, data: dict[str, str]) -> Summary:
    if version == "scorm12":
        status = data.get("cmi.core.lesson_status")
        success = status if status in ("passed", "failed") else None
        completion = "completed" if status in ("passed", "failed", "completed") else status or None
        raw, top = _number(data.get("cmi.core.score.raw")), _number(data.get("cmi.core.score.max"))
        scaled = raw / top if raw is not None and top else None
        return Summary(completion, success, raw, top, scaled)
    return Summary(
        data.get("cmi.completion_status"),
        data.get("cmi.success_status"),
        _number(data.get("cmi.score.raw")),
        _number(data.get("cmi.score.max")),
        _number(data.get("cmi.score.scaled")),
    )


_TIMESPAN_12 = re.compile(r"^(\d{2,4}):(\d{2}):(\d{2}(?:\.\d{1,2})?)$")
_DURATION = re.compile(
    r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


def session_seconds(version: Version, data: dict[str, str]) -> float:
    """The session time the content reported, in seconds (0 when absent or malformed)."""
    if version == "scorm12":
        found = _TIMESPAN_12.match(data.get("cmi.core.session_time", ""))
        if found is None:
            return 0.0
        hours, minutes, seconds = found.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    found = _DURATION.match(data.get("cmi.session_time", ""))
    if found is None:
        return 0.0
    years, months, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in found.groups())
    return ((years * 365 + months * 30 + days) * 24 + hours) * 3600 + minutes * 60 + seconds


def total_time_12(seconds: float) -> str:
    """``HHHH:MM:SS.SS`` (CMITimespan)."""
    hundredths = round(seconds * 100)
    hours, rest = divmod(hundredths, 360_000)
    minutes, rest = divmod(rest, 6000)
    return f"{min(hours, 9999):04d}:{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}"


def total_time_2004(seconds: float) -> str:
    """ISO 8601 duration (``PT1H2M3.5S``)."""
    hundredths = round(seconds * 100)
    hours, rest = divmod(hundredths, 360_000)
    minutes, rest = divmod(rest, 6000)
    text = "PT"
    if hours:
        text += f"{hours}H"
    if minutes:
        text += f"{minutes}M"
    return text + f"{rest / 100:g}S"


def entry(data: dict[str, str]) -> str:
    """``resume`` after a suspended session, else ``ab-initio``."""
    suspended = "suspend" in (data.get("cmi.core.exit"), data.get("cmi.exit"))
    return "resume" if suspended else "ab-initio"

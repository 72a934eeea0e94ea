"""Value types shared by the configuration's sections: strict models, durations
(``"7d"``), sizes (``"64MiB"``), watermarks and bounds, as pydantic validators."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from safekeeper.errors import BadInput
from safekeeper.units import parse_duration, parse_size


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def duration(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    try:
        return parse_duration(value)
    except BadInput as exc:
        raise ValueError(str(exc)) from exc


def size(value: Any) -> int:
    try:
        return parse_size(value)
    except BadInput as exc:
        raise ValueError(str(exc)) from exc


def size_or_fraction(value: Any) -> int | float | None:
    """Watermarks: bytes (``"80GiB"``) or a fraction of capacity (``0.9``)."""
    if value is None:
        return None
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError("a fraction of capacity must be between 0 and 1")
        return value
    return size(value)


def at_least(minimum: int) -> Any:
    def check(value: int) -> int:
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return check


def positive_duration(value: timedelta | None) -> timedelta | None:
    if value is not None and value <= timedelta(0):
        raise ValueError(f"must be longer than zero, got {value}")
    return value

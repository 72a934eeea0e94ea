from datetime import timedelta

import pytest

from safekeeper.cli.output import plural
from safekeeper.errors import BadInput
from safekeeper.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("512", 512),
        ("1kB", 1000),
        ("1KiB", 1024),
        ("10GiB", 10 * 1024**3),
        ("1.5 MB", 1_500_000),
        ("2t", 2 * 1000**4),
        (7, 7),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "1XB", "-5", "1 G B", -1])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(BadInput):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("3600", timedelta(hours=1)),
        (5, timedelta(seconds=5)),
    ],
)
def test_parse_duration(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "1y", "h", "1h 30", "30mm", -3])
def test_parse_duration_rejects(text: str | int) -> None:
    with pytest.raises(BadInput):
        parse_duration(text)


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(5 * 1024**4) == "5.0 TiB"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250 ms"),
        (1, "1 s"),
        (90, "1 min 30 s"),
        (3600, "1 h"),
        (5400, "1 h 30 min"),
        (7 * 86400, "7 d"),
        (86400 + 5 * 3600 + 59, "1 d 5 h"),
    ],
)
def test_durations_read_like_a_person_wrote_them(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


def test_plurals() -> None:
    assert plural(1, "copy", "copies") == "1 copy"
    assert plural(2, "copy", "copies") == "2 copies"
    assert plural(0, "hold") == "0 holds"
    assert plural(5000, "file") == "5000 files"

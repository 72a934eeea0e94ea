"""The one Range parser, as a table (RFC 9110 §14)."""

from __future__ import annotations

import pytest

from safekeeper.api.ranges import byte_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-3", 10, (0, 3)),
        ("bytes=2-", 10, (2, 9)),
        ("bytes=-4", 10, (6, 9)),
        ("bytes=-40", 10, (0, 9)),  # a suffix longer than the object: all of it
        ("bytes=5-100", 10, (5, 9)),  # the end is clamped
        ("BYTES = 1 - 2", 10, (1, 2)),  # unit case and spaces tolerated
        ("bytes=10-", 10, "unsatisfiable"),
        ("bytes=-0", 10, "unsatisfiable"),
        ("bytes=-5", 0, "unsatisfiable"),
        ("bytes=" + "9" * 5000 + "-", 10, "unsatisfiable"),  # no int() overflow
        ("bytes=0-" + "9" * 5000, 10, (0, 9)),
        ("bytes=5-3", 10, None),  # last before first: ignored
        ("bytes=0-1,4-5", 10, None),  # several ranges: the whole object
        ("bytes=-", 10, None),
        ("bytes=²-", 10, None),  # a digit int() refuses
        ("items=0-1", 10, None),
        ("bytes=a-b", 10, None),
    ],
)
def test_byte_range(header: str | None, size: int, expected: object) -> None:
    assert byte_range(header, size) == expected

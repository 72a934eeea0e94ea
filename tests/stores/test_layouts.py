"""The key policy and the three filesystem layouts, as the module docstring states them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safekeeper.errors import BadInput
from safekeeper.stores.layouts import (
    Layout,
    fanout_path,
    flat_path,
    get_layout,
    interval_path,
    validate_key,
    validate_prefix,
)

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize(
    ("key", "path"),
    [
        (SHA, f"9f/86/{SHA}"),
        ("abcd", "ab/cd/abcd"),
        ("0000-x.y_z", "00/00/0000-x.y_z"),
    ],
)
def test_fanout_paths(key: str, path: str) -> None:
    assert fanout_path(key) == path
    assert Layout("fanout").key_for_path(path) == key


@pytest.mark.parametrize("key", ["abc", "ABCD", "ab-c", "ab.cd", "Zzzz1"])
def test_fanout_rejects_keys_without_four_lowercase_alnum_head(key: str) -> None:
    with pytest.raises(BadInput, match="fanout"):
        fanout_path(key)


@pytest.mark.parametrize("key", ["a", "obj-1", SHA, "A.b_c-d"])
def test_flat_paths(key: str) -> None:
    assert flat_path(key) == key
    assert Layout("flat").key_for_path(key) == key


@pytest.mark.parametrize(
    ("key", "size", "path"),
    [
        ("0", 1000, "0/0/0"),
        ("999", 1000, "0/0/999"),
        ("1000", 1000, "0/1/1000"),
        ("999999", 1000, "0/999/999999"),
        ("1000000", 1000, "1/0/1000000"),
        ("1234567", 1000, "1/234/1234567"),
        ("12345", 10, "123/4/12345"),
        ("5", 2, "1/0/5"),
        (str(10**30), 1000, f"{10**24}/0/{10**30}"),
        (str(10**30 + 123_456_789), 1000, f"{10**24 + 123}/456/{10**30 + 123_456_789}"),
    ],
)
def test_interval_paths(key: str, size: int, path: str) -> None:
    assert interval_path(key, size) == path
    assert Layout("interval", size).key_for_path(path) == key


@pytest.mark.parametrize("key", ["abc", "007", "00", "-1", "+1", "1e3", "1_000", "\u0663", "1.0"])
def test_interval_takes_only_canonical_decimal_integers(key: str) -> None:
    with pytest.raises(BadInput):
        interval_path(key)


@pytest.mark.parametrize(
    "key",
    ["", ".", "..", ".hidden", "a/b", "/abs", "a\\b", "a..b", "nul\x00", "sp ace", "tab\t",
     "caf\u00e9", "-lead", "_lead", "x" * 256],
)  # fmt: skip
def test_bad_keys_rejected_by_every_layout(key: str) -> None:
    with pytest.raises(BadInput):
        validate_key(key)
    for name in ("fanout", "flat", "interval"):
        with pytest.raises(BadInput):
            Layout(name).path_for_key(key)


@pytest.mark.parametrize("key", ["a", "0", "obj-1", "A.b_c-d", SHA, "x" * 255, "9" * 255])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("prefix", ["", "a", "ab-", "9f86d0", "obj-"])
def test_good_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["../", ".", "a/", "a b", "x" * 256])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(BadInput):
        validate_prefix(prefix)


@pytest.mark.parametrize(
    ("layout", "path"),
    [
        (Layout("fanout"), f"9f/00/{SHA}"),  # wrong directory for the key
        (Layout("fanout"), SHA),  # right name, not in its fanout directory
        (Layout("flat"), f"9f/86/{SHA}"),
        (Layout("interval"), "0/1/999"),
        (Layout("interval", 10), "0/1/1000"),  # placed with the default size
        (Layout("interval"), "0/0/README"),
    ],
)
def test_key_for_path_rejects_misplaced_files(layout: Layout, path: str) -> None:
    with pytest.raises(BadInput):
        layout.key_for_path(path)


def test_dir_for_prefix_narrows_fanout_walks_only() -> None:
    fanout = Layout("fanout")
    assert [fanout.dir_for_prefix(p) for p in ("", "9", "9f", "9f8", "9f86", SHA)] == [
        "",
        "",
        "9f",
        "9f",
        "9f/86",
        "9f/86",
    ]
    assert Layout("flat").dir_for_prefix("9f86") == ""
    assert Layout("interval").dir_for_prefix("1234") == ""


@pytest.mark.parametrize(
    ("name", "size"), [("nested", 1000), ("interval", 1), ("interval", 0), ("interval", True)]
)
def test_bad_layout_config(name: str, size: int) -> None:
    with pytest.raises(BadInput):
        get_layout(name, size)


@given(st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyz-._", min_size=4, max_size=80))
def test_fanout_round_trip(tail: str) -> None:
    key = "ab01" + tail
    if ".." in key:
        return
    layout = Layout("fanout")
    assert layout.key_for_path(layout.path_for_key(key)) == key


@given(st.integers(min_value=0, max_value=10**60), st.integers(min_value=2, max_value=10**6))
def test_interval_round_trip(n: int, size: int) -> None:
    layout = Layout("interval", size)
    path = layout.path_for_key(str(n))
    top, middle, name = path.split("/")
    assert name == str(n)
    assert (
        int(top) * size * size + int(middle) * size
        <= n
        < int(top) * size * size + (int(middle) + 1) * size
    )
    assert 0 <= int(middle) < size
    assert layout.key_for_path(path) == str(n)

import hashlib

import pytest

from safekeeper.errors import BadInput
from safekeeper.ids import RefSpec, parse_blob_id, parse_ref

BLOB = hashlib.sha256(b"x").hexdigest()


def test_blob_id_is_normalised() -> None:
    assert parse_blob_id(BLOB.upper() + "\n") == BLOB


@pytest.mark.parametrize("text", ["", "abc", BLOB[:-1], BLOB + "0", "g" * 64])
def test_bad_blob_ids(text: str) -> None:
    with pytest.raises(BadInput, match="not a blob id"):
        parse_blob_id(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("course:unit-1", RefSpec("course", "unit-1", "default")),
        ("course:unit-1:draft", RefSpec("course", "unit-1", "draft")),
        ("proj:data/2026/a b.csv:v2", RefSpec("proj", "data/2026/a b.csv", "v2")),
    ],
)
def test_parse_ref(text: str, expected: RefSpec) -> None:
    assert parse_ref(text) == expected
    assert str(expected) == f"{expected.namespace}:{expected.key}:{expected.label}"


@pytest.mark.parametrize(
    "text",
    [
        "nocolon",
        "a:b:c:d",
        ":key",
        "ns:",
        "ns:a//b",
        "ns:../etc",
        "ns:a/./b",
        "n s:k",
        "ns:k:bad label",
        "-ns:k",
        "ns:k\x00",
    ],
)
def test_bad_refs(text: str) -> None:
    with pytest.raises(BadInput, match="bad"):
        parse_ref(text)


def test_label_required() -> None:
    with pytest.raises(BadInput, match="NAMESPACE:KEY:LABEL"):
        parse_ref("ns:key", label_required=True)

import hashlib
import os

import pytest

from safekeeper.errors import BadInput
from safekeeper.ids import (
    MAX_KEY_LENGTH,
    RefSpec,
    check_key,
    encode_key_segment,
    parse_blob_id,
    parse_ref,
    path_key,
)

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


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("docs", "docs"),
        ("./docs//a.txt", "docs/a.txt"),
        ("/srv/in box/a.txt", "srv/in box/a.txt"),
        (".", ""),
        ("Résumé (1).pdf", "R%C3%A9sum%C3%A9 %281%29.pdf"),
        ("a:b\nc", "a%3Ab%0Ac"),
        (os.fsdecode(b"bad\xff"), "bad%FF"),
        ("50%", "50%25"),
    ],
)
def test_path_keys_are_addressable(given: str, key: str) -> None:
    assert path_key(given) == key
    if key:
        assert parse_ref(f"files:{key}") == RefSpec("files", key)


def test_path_key_encoding_is_reversible() -> None:
    names = ["a b", "a%20b", "a:b", "a%3Ab", "é", "%C3%A9"]
    assert len({encode_key_segment(n) for n in names}) == len(names)


def test_too_long_keys_name_the_limit() -> None:
    with pytest.raises(BadInput, match=f"the limit is {MAX_KEY_LENGTH}"):
        check_key("k/" * 600 + "k")
    with pytest.raises(BadInput, match="the limit is 200 between slashes"):
        check_key("k" * 201)
    with pytest.raises(BadInput, match="the limit is 200"):
        parse_ref("n" * 201 + ":key")

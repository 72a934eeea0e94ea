"""docs/configuration.md documents every key the configuration accepts, and every
example in it is a valid configuration."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from safekeeper.config import (
    Config,
    DatabaseConfig,
    LocationConfig,
    PackagesConfig,
    PolicyConfig,
    ServerConfig,
    SiteConfig,
    TasksConfig,
    default_document,
    write_default,
)

DOC = Path(__file__).parent.parent / "docs" / "configuration.md"
TEXT = DOC.read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```toml\n(.*?)```", TEXT, re.DOTALL)


@pytest.mark.parametrize(
    "model",
    [
        SiteConfig,
        LocationConfig,
        PolicyConfig,
        TasksConfig,
        DatabaseConfig,
        PackagesConfig,
        ServerConfig,
    ],
)
def test_every_key_is_documented(model: type[BaseModel]) -> None:
    missing = [name for name in model.model_fields if f"`{name}`" not in TEXT]
    assert missing == []


@pytest.mark.parametrize("example", EXAMPLES, ids=range(len(EXAMPLES)))
def test_every_example_is_a_valid_configuration(example: str, tmp_path: Path) -> None:
    document = tomllib.loads(example)
    if "locations" not in document:
        document = {**default_document(), **document}
    if "sites" not in document:
        document["sites"] = {}
    Config.model_validate({**document, "data_dir": tmp_path})


def test_the_default_example_is_the_default(tmp_path: Path) -> None:
    assert tomllib.loads(EXAMPLES[0]) == default_document()
    header = write_default(tmp_path).read_text(encoding="utf-8")
    assert "docs/configuration.md" in header.splitlines()[1]

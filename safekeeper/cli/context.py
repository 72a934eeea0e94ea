"""What every command shares: where the configuration is, and opening the archive once."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from safekeeper.errors import BadInput
from safekeeper.ids import RefSpec, parse_ref

if TYPE_CHECKING:
    from safekeeper.archive import Archive


@dataclass
class CliState:
    config_path: Path | None = None
    data_dir: Path | None = None
    _archive: Archive | None = field(default=None, repr=False)

    def archive(self, moving: Collection[str] = ()) -> Archive:
        """The archive, opened once; ``moving``: see ``Archive``."""
        if self._archive is None:
            from safekeeper.archive import Archive
            from safekeeper.config import load_config

            config = load_config(self.config_path, self.data_dir)
            self._archive = Archive(config, moving=moving)
        return self._archive

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None


def person() -> str:
    """Who is running this command, as ``user@host``: recorded with what they do."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def parse_ref_param(value: str) -> RefSpec:
    """Typer parser: a bad ``NAMESPACE:KEY[:LABEL]`` is a usage error (exit 2)."""
    try:
        return parse_ref(value)
    except BadInput as exc:
        raise typer.BadParameter(str(exc)) from exc

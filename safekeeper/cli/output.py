"""Printing for the CLI: JSON for scripts, Rich tables and progress for people."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from safekeeper.units import format_duration

if TYPE_CHECKING:
    from rich.progress import Progress

# Piped output is for scripts and grep: wide enough that ids and rules are never cut.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "namespace") and hasattr(value, "label"):  # RefSpec
        return str(value)
    return value


def print_lines(lines: Sequence[str]) -> None:
    """Print plain lines to stdout. Lines without control characters (names are shown
    with ``display_path``'s escapes) go straight to the stream: Rich's per-character
    pass over 10,000 lines costs more than storing small files."""
    if all(line.isprintable() for line in lines):
        console.file.write("".join(f"{line}\n" for line in lines))
    else:
        console.print("\n".join(lines), markup=False)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_plain(value), indent=2) + "\n")


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``plural(1, "copy", "copies")`` → ``"1 copy"``; ``plural(5000, "file")`` →
    ``"5000 files"`` (no separators: scripts and benchmarks grep these lines)."""
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {word}"


def duration(value: timedelta) -> str:
    return format_duration(value)


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    grid = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(
            column, justify="right" if column in ("size", "bytes", "objects") else "left"
        )
    for row in rows:
        grid.add_row(*(str(cell) for cell in row))
    console.print(grid)


def byte_progress(enabled: bool) -> Progress:
    """A progress bar over bytes on stderr; silent when disabled or not a terminal."""
    from rich.progress import (  # only the commands that move bytes pay for it
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not enabled or not err_console.is_terminal,
    )

"""The ``safekeeper`` command. Commands are thin: parse, call a service, print.

Exit codes: 0 ok, 1 error, 2 usage (bad arguments).

Start-up: a command imports only its own module (and what that needs). The root group
knows each command by name, module and a one-line summary (``COMMANDS``); it imports a
command's module when that command runs or its own ``--help`` is asked for. ``safekeeper
--help`` imports none of them — no SQLAlchemy, pydantic, FastAPI or Rich tables
(tests/cli/test_startup.py keeps it so; bench/startup.py measures it).
"""

from __future__ import annotations

import errno
import importlib
import io
import os
import sys
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.main import get_command_from_info, get_group_from_info
from typer.models import CommandInfo, TyperInfo

from safekeeper.errors import Interrupted, SafekeeperError


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives (``module``, ``attribute``: a function or a ``typer.Typer``)
    and the summary ``safekeeper --help`` shows for it without importing the module."""

    module: str
    attribute: str
    summary: str


#: Every command, in the order ``--help`` lists them. The summaries repeat the first
#: paragraph of each command's help; tests/cli/test_startup.py checks they still match.
COMMANDS: dict[str, LazyCommand] = {
    "init": LazyCommand(
        "safekeeper.cli.admin",
        "init",
        "Create DIRECTORY (default ./safekeeper-data) with a default safekeeper.toml and an\n"
        "empty SQLite database (safekeeper.db).",
    ),
    "put": LazyCommand(
        "safekeeper.cli.blobs",
        "put",
        "Store files, directories (recursively) or stdin as blobs, each kept by a reference.",
    ),
    "get": LazyCommand(
        "safekeeper.cli.blobs",
        "get",
        "Write a blob's bytes to a file or stdout, checking its hash on the way.",
    ),
    "ls": LazyCommand(
        "safekeeper.cli.blobs",
        "ls",
        "List blobs (with why each is kept, or when it goes), or references with --refs or\n"
        "a NAMESPACE.",
    ),
    "stat": LazyCommand(
        "safekeeper.cli.blobs",
        "stat",
        "Show a blob's copies per location (state, size, verified-at), its references, and\n"
        "why it is kept (referenced, held) or when it goes (garbage after the grace period).",
    ),
    "export": LazyCommand(
        "safekeeper.cli.bundles",
        "export_command",
        "Write a namespace's references, package metadata and blobs to a bundle file.",
    ),
    "import": LazyCommand(
        "safekeeper.cli.bundles",
        "import_command",
        "Import a bundle: every blob checked, every package validated, all references set\n"
        "in one transaction.",
    ),
    "locations": LazyCommand(
        "safekeeper.cli.admin",
        "locations_app",
        "Each location with kind, site, store, object count and bytes; `move` confirms a "
        "changed store or kind.",
    ),
    "replicate": LazyCommand(
        "safekeeper.cli.replication",
        "replicate",
        "Schedule transfers for every blob whose replication policy is not met.",
    ),
    "verify": LazyCommand(
        "safekeeper.cli.replication",
        "verify",
        "Re-hash copies; mark missing/corrupt ones and schedule repairs; report orphans.",
    ),
    "plan": LazyCommand(
        "safekeeper.cli.deletion",
        "plan",
        "Dry run: what gc would delete (rule, reason, bytes) and what it keeps, and why.",
    ),
    "gc": LazyCommand(
        "safekeeper.cli.deletion",
        "gc_command",
        "Delete what the plan allows: claim, re-check, delete, record (with audit).",
    ),
    "audit": LazyCommand(
        "safekeeper.cli.deletion",
        "audit_command",
        "Read the audit log of deletions.",
    ),
    "hold": LazyCommand(
        "safekeeper.cli.deletion",
        "hold",
        "Forbid deleting any copy of a blob, or of any blob a namespace references.",
    ),
    "release": LazyCommand(
        "safekeeper.cli.deletion",
        "release",
        "Release the holds on a blob or namespace.",
    ),
    "holds": LazyCommand(
        "safekeeper.cli.deletion",
        "holds_list",
        "List holds.",
    ),
    "worker": LazyCommand(
        "safekeeper.cli.worker",
        "worker",
        "Run the task queue of the given sites until SIGTERM or Ctrl-C.",
    ),
    "status": LazyCommand(
        "safekeeper.cli.status",
        "status",
        "Workers (heartbeat, sites, configuration), queues per site, running tasks, stores.\n"
        "Exits 1 when something needs attention: a stale worker, failed tasks, tasks whose\n"
        'worker thread got stuck ("stalled"), a store that cannot be reached.',
    ),
    "serve": LazyCommand(
        "safekeeper.cli.serve",
        "serve",
        "Serve the HTTP API, packages and the dashboard (default http://127.0.0.1:8470).",
    ),
    "tasks": LazyCommand(
        "safekeeper.cli.replication",
        "tasks_app",
        "The task queue: list, retry failed tasks, cancel tasks.",
    ),
    "jobs": LazyCommand(
        "safekeeper.cli.deletion",
        "jobs_app",
        "Staging jobs: blobs needed at a processing location.",
    ),
    "db": LazyCommand(
        "safekeeper.cli.admin",
        "db_app",
        "Database maintenance.",
    ),
    "ref": LazyCommand(
        "safekeeper.cli.refs",
        "refs_app",
        "References NAMESPACE:KEY[:LABEL] → blob.",
    ),
    "pkg": LazyCommand(
        "safekeeper.cli.packages",
        "packages_app",
        "Zip packages: validated, described, served.",
    ),
    "users": LazyCommand(
        "safekeeper.cli.accounts",
        "users_app",
        "Users: add, list, change password, disable, delete.",
    ),
    "tenants": LazyCommand(
        "safekeeper.cli.accounts",
        "tenants_app",
        "Tenants: the owners of namespaces and users.",
    ),
}


class _Group(TyperGroup):
    """The root: commands imported on first use; safekeeper's errors turned into one
    line on stderr and exit status 1."""

    _listing = False  # True while the root's own help is being written

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*COMMANDS, *(name for name in super().list_commands(ctx) if name not in COMMANDS)]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name not in COMMANDS or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        if self._listing:  # the root's --help: the summary only, no import
            summary = COMMANDS[cmd_name].summary
            return TyperCommand(name=cmd_name, help=summary, short_help=summary)
        command = load_command(cmd_name, self)
        self.commands[cmd_name] = command
        return command

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            # Typer's boxed help prints itself while its usage error is being made; the
            # plain one (format_help) is returned, so it is printed here. Exit 2 as before.
            _click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(2)
        try:
            return super().parse_args(ctx, args)
        except _click.exceptions.UsageError as exc:  # the root's own options
            _usage_error(exc)

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except _click.exceptions.UsageError as exc:
            # Typer suggests only among loaded commands; suggest among all of them.
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if self.suggest_commands and matches and "Did you mean" not in exc.message:
                suggestions = ", ".join(repr(match) for match in matches)
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {suggestions}?"
            raise

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """The root's help, written by click's plain formatter. Typer's boxed help imports
        ``rich.markdown`` and ``rich.traceback`` (with markdown-it and Pygments): that alone
        doubles ``safekeeper --help`` (0.2 s instead of 0.1 s, bench/startup.py). A
        command's own ``--help`` keeps the boxes: it imports Rich for its output anyway."""
        self._listing = True
        try:
            _click.Command.format_help(self, ctx, formatter)
        finally:
            self._listing = False

    def invoke(self, ctx: _click.Context) -> Any:
        """Every error a user can cause becomes one line on stderr and exit status 1:
        safekeeper's errors, and the environment's (a full disk, a closed pipe, a file it
        may not read). Ctrl-C exits 130 with what was finished."""
        try:
            result = super().invoke(ctx)
            _flush_stdout()  # a full disk or closed pipe is reported here, not at exit
            return result
        except Interrupted as exc:
            _say(str(exc))
            raise typer.Exit(130) from exc
        except KeyboardInterrupt as exc:
            _say("interrupted")
            raise typer.Exit(130) from exc
        except SafekeeperError as exc:
            _error(str(exc))
            raise typer.Exit(1) from exc
        except _click.exceptions.NoArgsIsHelpError:
            raise  # the command's help, as asked for by giving it nothing
        except _click.exceptions.UsageError as exc:
            _usage_error(exc)
        except BrokenPipeError as exc:  # the reader went away (`| head`): nothing to say
            _silence_stdout()
            raise typer.Exit(1) from exc
        except OSError as exc:
            _silence_stdout()
            if exc.filename:
                where = f"{exc.filename}: "
            elif exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
                where = "cannot write to stdout: "  # files and stores name themselves
            else:
                where = ""
            _error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(1) from exc


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write to stdout: {exc.strerror}") from exc


def _say(message: str) -> None:
    from safekeeper.cli.output import err_console  # Rich: only when there is something to say

    err_console.print(message)


def _usage_error(exc: _click.exceptions.UsageError) -> NoReturn:
    """A bad option or argument is bad input like any other: one ``error:`` line (Typer
    would draw a box around the usage), exit status 2 as click gives it."""
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
    _error(exc.format_message() + where)
    raise typer.Exit(2) from exc


def _error(message: str) -> None:
    from rich.text import Text

    from safekeeper.cli.output import err_console

    err_console.print(Text.assemble(("error: ", "bold red"), message))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (an in-process test runner): nothing is flushed at exit


def load_command(name: str, root: TyperGroup) -> _click.Command:
    """Import command ``name``'s module and build its click command as ``app.command()``
    / ``app.add_typer()`` would have, with the root's settings."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    markup = root.rich_markup_mode
    if isinstance(target, typer.Typer):
        return get_group_from_info(
            TyperInfo(target, name=name),
            pretty_exceptions_short=app.pretty_exceptions_short,
            suggest_commands=app.suggest_commands,
            rich_markup_mode=markup,
        )
    return get_command_from_info(
        CommandInfo(name=name, callback=target),
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=markup,
    )


def _flags_take_no_value() -> None:
    """Typer 0.29 shows a flag (``--json``) as ``--json <bool>`` in help, as if it took
    a value; a flag's help shows no type."""
    show_type = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: _click.Context) -> str | None:
        return None if self.is_flag else show_type(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    cls=_Group,
    name="safekeeper",
    help="Track every copy of every file; replicate by policy; delete only when safe.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="SAFEKEEPER_CONFIG", help="safekeeper.toml to use."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            envvar="SAFEKEEPER_DATA_DIR",
            help="Data directory (default ./safekeeper-data).",
        ),
    ] = None,
) -> None:
    from safekeeper.cli.context import state

    cli_state = state(ctx)
    cli_state.config_path, cli_state.data_dir = config, data_dir
    ctx.call_on_close(cli_state.close)


def main() -> None:
    app()

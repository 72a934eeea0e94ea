"""The ``safekeeper`` command. Commands are thin: parse, call a service, print.

Exit codes: 0 ok, 1 error, 2 usage (bad arguments).
"""

from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from typer import _click
from typer.core import TyperGroup, TyperOption

from safekeeper.cli import accounts as accounts_cli
from safekeeper.cli import admin, blobs, bundles, deletion, replication, serve
from safekeeper.cli import packages as packages_cli
from safekeeper.cli import refs as refs_cli
from safekeeper.cli import worker as worker_cli
from safekeeper.cli.context import state
from safekeeper.cli.output import err_console
from safekeeper.errors import Interrupted, SafekeeperError


class _Group(TyperGroup):
    """Turns every error a user can cause into one line on stderr and exit status 1:
    safekeeper's errors, and the environment's (a full disk, a closed pipe, a file it
    may not read). Ctrl-C exits 130 with what was finished."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            _flush_stdout()  # a full disk or closed pipe is reported here, not at exit
            return result
        except Interrupted as exc:
            err_console.print(str(exc))
            raise typer.Exit(130) from exc
        except KeyboardInterrupt as exc:
            err_console.print("interrupted")
            raise typer.Exit(130) from exc
        except SafekeeperError as exc:
            _error(str(exc))
            raise typer.Exit(1) from exc
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


def _error(message: str) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), message))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (an in-process test runner): nothing is flushed at exit


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
    cli_state = state(ctx)
    cli_state.config_path, cli_state.data_dir = config, data_dir
    ctx.call_on_close(cli_state.close)


app.command()(admin.init)
app.command()(blobs.put)
app.command()(blobs.get)
app.command()(blobs.ls)
app.command()(blobs.stat)
app.command("export")(bundles.export_command)
app.command("import")(bundles.import_command)
app.command()(admin.locations)
app.command()(replication.replicate)
app.command()(replication.verify)
app.add_typer(replication.tasks_app, name="tasks")
app.command()(deletion.plan)
app.command("gc")(deletion.gc_command)
app.command("audit")(deletion.audit_command)
app.command()(deletion.hold)
app.command()(deletion.release)
app.command("holds")(deletion.holds_list)
app.add_typer(deletion.jobs_app, name="jobs")
app.command()(worker_cli.worker)
app.command()(serve.serve)
app.add_typer(admin.db_app, name="db")
app.add_typer(refs_cli.refs_app, name="ref")
app.add_typer(packages_cli.packages_app, name="pkg")
app.add_typer(accounts_cli.users_app, name="users")
app.add_typer(accounts_cli.tenants_app, name="tenants")


def main() -> None:
    app()

"""The ``safekeeper`` command. Commands are thin: parse, call a service, print.

Exit codes: 0 ok, 1 error, 2 usage (bad arguments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from typer import _click
from typer.core import TyperGroup

from safekeeper.cli import accounts as accounts_cli
from safekeeper.cli import admin, blobs, bundles, deletion, replication, serve
from safekeeper.cli import packages as packages_cli
from safekeeper.cli import refs as refs_cli
from safekeeper.cli import status as status_cli
from safekeeper.cli import worker as worker_cli
from safekeeper.cli.context import state
from safekeeper.cli.output import err_console
from safekeeper.errors import SafekeeperError


class _Group(TyperGroup):
    """Turns safekeeper's errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SafekeeperError as exc:
            err_console.print(Text.assemble(("error: ", "bold red"), str(exc)))
            raise typer.Exit(1) from exc


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
app.command()(status_cli.status)
app.command()(serve.serve)
app.add_typer(admin.db_app, name="db")
app.add_typer(refs_cli.refs_app, name="ref")
app.add_typer(packages_cli.packages_app, name="pkg")
app.add_typer(accounts_cli.users_app, name="users")
app.add_typer(accounts_cli.tenants_app, name="tenants")


def main() -> None:
    app()

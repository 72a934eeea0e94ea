"""``serve``: the HTTP API, package serving and the dashboard in one process."""

from __future__ import annotations

from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import err_console


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Serve the HTTP API, packages and the dashboard (default http://127.0.0.1:8470)."""
    import uvicorn

    from safekeeper.api.app import create_app

    archive = state(ctx).archive()
    settings = archive.config.server
    bind_host, bind_port = host or settings.host, port or settings.port
    err_console.print(f"serving {archive.config.data_dir} on http://{bind_host}:{bind_port}/")
    uvicorn.run(create_app(archive), host=bind_host, port=bind_port, log_level="warning")

"""``serve``: the HTTP API, package serving and the dashboard in one process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Annotated

import typer

from safekeeper.archive import Archive
from safekeeper.cli.context import state
from safekeeper.cli.output import err_console


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    with_worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Embedded executor: also replicate and run due tasks in this process "
            "(turn off when `safekeeper worker` runs elsewhere).",
        ),
    ] = True,
) -> None:
    """Serve the HTTP API, packages and the dashboard (default http://127.0.0.1:8470)."""
    from safekeeper.engine import worker as worker_process

    archive = state(ctx).archive()
    settings = archive.config.server
    bind_host, bind_port = host or settings.host, port or settings.port
    if (bind_host, bind_port) != (settings.host, settings.port):
        # The package origin and who may frame it follow the address actually served.
        settings = settings.model_copy(update={"host": bind_host, "port": bind_port})
        archive.config = archive.config.model_copy(update={"server": settings})
    stop = threading.Event()
    worker: threading.Thread | None = None
    if with_worker and archive.config.tasks.executor == "embedded":
        sites = worker_process.configured_sites(archive)
        worker = threading.Thread(
            target=worker_process.embedded_loop,
            args=(archive, sites, stop),
            name="safekeeper-embedded-worker",
            daemon=True,
        )
        worker.start()
    package_port = settings.package_listen_port
    err_console.print(
        f"serving {archive.config.data_dir} on http://{bind_host}:{bind_port}/, "
        f"packages on http://{bind_host}:{package_port}/ ({settings.package_base})"
    )

    def shut_down(_signum: int, _frame: FrameType | None) -> None:
        # uvicorn handles SIGTERM/SIGINT itself, then raises the signal again once the
        # server has stopped: that lands here, so the worker's tasks can finish too.
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, shut_down) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(_serve_both(archive, bind_host, bind_port, package_port))
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=60)  # the running tasks finish; their claims stay valid
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _serve_both(archive: Archive, host: str, port: int, package_port: int) -> None:
    """The dashboard/API and the package origin, one listener each, in one event loop;
    the first takes the signals and the second stops with it."""
    import uvicorn

    from safekeeper.api.app import create_app
    from safekeeper.api.http_server import uvicorn_options
    from safekeeper.api.package_origin import create_package_app

    class Companion(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    options = uvicorn_options(archive.config.server)
    main = uvicorn.Server(uvicorn.Config(create_app(archive), host, port, **options))
    packages = Companion(
        uvicorn.Config(create_package_app(archive), host, package_port, lifespan="off", **options)
    )
    companion = asyncio.create_task(packages.serve())
    try:
        await main.serve()
    finally:
        packages.should_exit = True
        await companion

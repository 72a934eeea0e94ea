"""``serve``: the HTTP API, package serving and the dashboard in one process."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Annotated

import typer

from safekeeper.archive import Archive
from safekeeper.cli.context import state
from safekeeper.cli.output import err_console
from safekeeper.errors import BadInput


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, or BadInput naming the address (port in use, bad host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise BadInput(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise BadInput(f"cannot listen on {host}:{port}: {reason}") from exc
    listener.set_inheritable(True)
    return listener


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.", min=1, max=65535)] = None,
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
    package_port = settings.package_listen_port
    # A busy port fails here, before "serving" and before the worker starts.
    listener = _listen(bind_host, bind_port)
    try:
        package_listener = _listen(bind_host, package_port)
    except BadInput:
        listener.close()
        raise
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
        asyncio.run(_serve_both(archive, listener, package_listener))
    finally:
        listener.close()
        package_listener.close()
        stop.set()
        if worker is not None:
            worker.join(timeout=60)  # the running tasks finish; their claims stay valid
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _serve_both(
    archive: Archive, listener: socket.socket, package_listener: socket.socket
) -> None:
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
    main = uvicorn.Server(uvicorn.Config(create_app(archive), **options))
    packages = Companion(uvicorn.Config(create_package_app(archive), lifespan="off", **options))
    companion = asyncio.create_task(packages.serve(sockets=[package_listener]))
    try:
        await main.serve(sockets=[listener])
    finally:
        packages.should_exit = True
        await companion

"""``worker``: run the tasks of one or more sites until stopped (see engine.worker)."""

from __future__ import annotations

from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.engine import worker as worker_process
from safekeeper.errors import BadInput


def worker(
    ctx: typer.Context,
    sites: Annotated[
        list[str] | None,
        typer.Option(
            "--site",
            metavar="NAME",
            help="Run this site's tasks (repeatable). Default: every configured site.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            metavar="PORT",
            min=1,
            max=65535,
            help="Serve Prometheus metrics (the catalog's, as /metrics, and this process's)"
            " on this port. Default: off.",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option("--metrics-host", metavar="HOST", help="Address for --metrics-port."),
    ] = "127.0.0.1",
) -> None:
    """Run the task queue of the given sites until SIGTERM or Ctrl-C.

    Celery executor: consume the sites' queues on the broker. Embedded: run the
    sites' due tasks in this process. Either way, also run a replication pass every
    tasks.replicate_interval.
    """
    archive = state(ctx).archive()
    known = worker_process.configured_sites(archive)
    chosen = sorted(set(sites)) if sites else known
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise typer.BadParameter(
            f"unknown site {', '.join(map(repr, unknown))}; configured: {', '.join(known)}",
            param_hint="--site",
        )
    if metrics_port is not None:
        from safekeeper.api.metrics import serve_metrics

        try:
            serve_metrics(archive, metrics_host, metrics_port)
        except OSError as exc:  # the port is taken, or the address is not this host's
            raise BadInput(
                f"--metrics-port: cannot listen on {metrics_host}:{metrics_port}:"
                f" {exc.strerror or exc}"
            ) from exc
    code = worker_process.run(archive, chosen)
    if code:
        raise typer.Exit(code)

"""Package benchmarks: serving small package members over HTTP, and bundles.

    python bench/packages.py                      # serving, 3 rounds x 5 s per server
    python bench/packages.py --quick              # 1 round x 2 s (smoke test)
    python bench/packages.py --only serving --repeats 5 --json-out bench/out/packages.json

Benchmarks:

``serving``
    One 4 KiB member of an HTML package, fetched over keep-alive connections by
    ``wrk`` (one thread, ``--connections``), from four servers, each one process:

    - ``safekeeper``: the real package origin (``create_package_app``, the second
      listener of ``safekeeper serve``) serving ``/c/{capability}/data/blob.bin`` from
      its extracted tree in the cache location, to a member of the tenant owning the
      package (every request pays the capability check — MAC, expiry — the viewer's
      state and the tenant check);
    - ``StaticFiles``: Starlette's ``StaticFiles`` over the same extracted tree;
    - ``memory``: a minimal ASGI app answering the same bytes from memory (the ceiling
      of any Python app on this server stack);
    - ``nginx``: one worker over the same tree (the ceiling, recorded for scale).

    The three Python apps run under ``uvicorn`` with one worker, ``--no-access-log``,
    ``--loop uvloop --http httptools``. Every server gets a 1 s warm-up (safekeeper
    extracts the package then), then the rounds run the servers in rotating order;
    tables show median requests/s. Target: safekeeper >= 0.3 x the memory app.
``bundles``
    Runs ``bench/bundles.py`` (export/import, written separately) when it exists,
    with the same ``--quick`` / ``--repeats`` / ``--check-targets`` flags.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    REPO_ROOT,
    Row,
    add_output_options,
    exit_status,
    find_executable,
    free_port,
    have_tools,
    log,
    machine_info,
    median,
    parse_only,
    report,
    run,
    run_selected,
    verdict,
    workdir,
)

BENCHMARKS = ("serving", "bundles")
SERVING_TARGET = 0.3
SERVERS = ("safekeeper", "StaticFiles", "memory", "nginx")

#: The ASGI apps uvicorn imports (written into the work dir; ``--app-dir`` points there).
APPS_MODULE = """
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

TREE = Path(os.environ["BENCH_TREE"])
BODY = (TREE / "data" / "blob.bin").read_bytes()
HEADERS = [
    (b"content-type", b"application/octet-stream"),
    (b"content-length", str(len(BODY)).encode()),
    (b"etag", b'"0123456789abcdef"'),
    (b"cache-control", b"public, max-age=31536000, immutable"),
]


async def memory(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


static = Starlette(routes=[Mount("/s", StaticFiles(directory=TREE))])


def safekeeper():
    from safekeeper import open_archive
    from safekeeper.api.package_origin import create_package_app

    return create_package_app(open_archive(os.environ["BENCH_DATA_DIR"]))
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
user {user};
error_log {work}/nginx-error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {tree};
    }}
}}
"""


@dataclass(frozen=True)
class Settings:
    work: Path
    repeats: int
    seconds: int
    connections: int
    quick: bool
    check_targets: bool


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    #: Request headers (safekeeper: the session cookie).
    headers: dict[str, str]


def _wait_for(server: Server, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    request = urllib.request.Request(server.url, headers=server.headers)
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with status {server.process.returncode} before serving"
            )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer {server.url} within {timeout} s")


@contextlib.contextmanager
def servers(work: Path, data_dir: Path, tree: Path, capability: str) -> Iterator[list[Server]]:
    """Start the four servers, each on its own port; stop them at the end."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")},
        "BENCH_TREE": str(tree),
        "BENCH_DATA_DIR": str(data_dir),
    }
    (work / "bench_apps.py").write_text(APPS_MODULE, encoding="utf-8")
    uvicorn = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(work), "--workers", "1",
        "--no-access-log", "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
        "--host", "127.0.0.1",
    ]  # fmt: skip
    started: list[Server] = []
    try:
        for name, target, path in (
            (
                "safekeeper",
                ["--factory", "bench_apps:safekeeper"],
                f"/c/{capability}/data/blob.bin",
            ),
            ("StaticFiles", ["bench_apps:static"], "/s/data/blob.bin"),
            ("memory", ["bench_apps:memory"], "/data/blob.bin"),
        ):
            port = free_port()
            log_file = (work / f"{name}.log").open("wb")
            process = subprocess.Popen(
                [*uvicorn, "--port", str(port), *target],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            started.append(Server(name, f"http://127.0.0.1:{port}{path}", process, {}))
        port = free_port()
        (work / "nginx-tmp").mkdir(exist_ok=True)
        conf = work / "nginx.conf"
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        conf.write_text(NGINX_CONF.format(user=user, work=work, port=port, tree=tree))
        nginx = subprocess.Popen(
            [find_executable("nginx"), "-p", str(work), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(Server("nginx", f"http://127.0.0.1:{port}/data/blob.bin", nginx, {}))
        for server in started:
            _wait_for(server)
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.process.send_signal(
                    signal.SIGTERM if server.name != "nginx" else signal.SIGQUIT
                )
        for server in started:
            try:
                server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=10)


_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def wrk(server: Server, seconds: int, connections: int) -> float:
    """Requests per second over ``seconds`` of one wrk thread; fail on any error."""
    headers = [arg for name, value in server.headers.items() for arg in ("-H", f"{name}: {value}")]
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    out = run([*argv, *headers, server.url])
    errors = _ERRORS.search(out)
    if errors:
        raise RuntimeError(f"wrk reported errors against {server.url}:\n{out}")
    found = _RPS.search(out)
    if not found:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return float(found.group(1))


def prepare(work: Path) -> tuple[Path, Path, str]:
    """A data dir holding one HTML package (4 KiB member ``data/blob.bin``) in namespace
    ``bench`` of tenant ``bench``, and a capability for a member of that tenant to read
    it; the extracted tree is built by unzipping it next door (the same bytes the cache
    holds)."""
    sys.path.insert(0, str(REPO_ROOT))
    from io import BytesIO

    from safekeeper import open_archive
    from safekeeper.ids import parse_ref
    from safekeeper.packages.capabilities import BlobTarget, Capability, encode, load_secret
    from safekeeper.services.access import accounts, sessions
    from safekeeper.services.access.tenancy import claim_namespace
    from safekeeper.services.packaging.packages import put_package
    from tests.packages.zips import build_html_package

    data_dir = work / "sk-data"
    run(["safekeeper", "init", data_dir])
    data = build_html_package()
    password = "bench password, not secret"
    with open_archive(data_dir) as archive:
        accounts.add_tenant(archive, "bench")
        accounts.add_user(archive, "member", tenant="bench", role="member", password=password)
        account = accounts.authenticate(archive, "member", password)
        with archive.db.write() as session:
            member = sessions.principal_of(account, "session", None)
            claim_namespace(session, member, "bench", archive.clock())
        sha = put_package(archive, BytesIO(data), parse_ref("bench:course")).sha256
        expires = int(archive.clock().timestamp()) + 24 * 3600
        capability = encode(
            load_secret(archive.config), Capability(account.user_id, BlobTarget(sha), expires)
        )
    tree = work / "tree"
    import zipfile

    with zipfile.ZipFile(BytesIO(data)) as package:
        package.extractall(tree)
    return data_dir, tree, capability


def bench_serving(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    data_dir, tree, capability = prepare(settings.work)
    samples: dict[str, list[float]] = {name: [] for name in SERVERS}
    with servers(settings.work, data_dir, tree, capability) as started:
        for server in started:
            wrk(server, 1, settings.connections)  # warm-up; safekeeper extracts here
        for i in range(settings.repeats):
            order = started[i % len(started) :] + started[: i % len(started)]
            for server in order:
                rate = wrk(server, settings.seconds, settings.connections)
                samples[server.name].append(rate)
                log(f"serving: round {i + 1} {server.name}: {rate:,.0f} req/s")
    medians = {name: median(values) for name, values in samples.items()}
    ratio = medians["safekeeper"] / medians["memory"]
    result = {
        "member_bytes": 4096,
        "safekeeper_auth": "capability URL (package origin) of a member of the package's tenant",
        "connections": settings.connections,
        "seconds_per_run": settings.seconds,
        "requests_per_second": {n: [round(v, 1) for v in s] for n, s in samples.items()},
        "median_requests_per_second": {n: round(v, 1) for n, v in medians.items()},
        "ratio_safekeeper_memory": round(ratio, 3),
        "ratio_staticfiles_memory": round(medians["StaticFiles"] / medians["memory"], 3),
        "ratio_safekeeper_nginx": round(medians["safekeeper"] / medians["nginx"], 3),
        "target": f">= {SERVING_TARGET} x memory",
        "passed": ratio >= SERVING_TARGET,
    }
    rows = [
        Row(
            "serving",
            f"4 KiB member, req/s: {name} vs memory app",
            f"{medians['memory']:,.0f}",
            f"{medians[name]:,.0f}",
            f"{medians[name] / medians['memory']:.2f}",
            f">= {SERVING_TARGET}" if name == "safekeeper" else "info",
            verdict(ratio >= SERVING_TARGET) if name == "safekeeper" else "",
        )
        for name in ("safekeeper", "StaticFiles", "nginx")
    ]
    return result, rows


def bench_bundles(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    script = Path(__file__).with_name("bundles.py")
    if not script.is_file():
        log("bundles: bench/bundles.py does not exist yet; skipped")
        return {"skipped": "bench/bundles.py missing"}, [Row("bundles", "skipped: no bundles.py")]
    json_out = settings.work / "bundles.json"
    argv = [sys.executable, str(script), "--json-out", str(json_out)]
    if settings.quick:
        argv.append("--quick")
    if settings.check_targets:
        argv.append("--check-targets")
    completed = subprocess.run(argv, check=False)
    import json

    results = json.loads(json_out.read_text()) if json_out.is_file() else {}
    results["exit_status"] = completed.returncode
    if completed.returncode != 0:
        results["passed"] = False
    return results, [
        Row("bundles", "see bench/bundles.py output above", result=str(completed.returncode))
    ]


def _nginx_version() -> str:
    answer = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return answer.stderr.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark package serving (and bundles, when bench/bundles.py exists).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="serving, bundles, or both (default)"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per server")
    parser.add_argument("--repeats", type=int, help="rounds per server (default 3; quick 1)")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 5; quick 2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = parse_only(args.only, BENCHMARKS)
    skipped: dict[str, str] = {}
    if "serving" in only and (missing := have_tools("wrk", "nginx")):
        skipped["serving"] = f"skipped: {', '.join(missing)} not found on PATH"
        only.remove("serving")
        log(f"serving: {skipped['serving']}")
    status = 0
    with workdir(args.workdir, keep=args.keep) as work:
        settings = Settings(
            work=work,
            repeats=args.repeats or (1 if args.quick else 3),
            seconds=args.seconds or (2 if args.quick else 5),
            connections=args.connections,
            quick=args.quick,
            check_targets=args.check_targets,
        )
        if settings.repeats < 1 or settings.seconds < 1:
            raise SystemExit("error: --repeats and --seconds must be at least 1")
        machine = machine_info(work)
        runners = {"serving": bench_serving, "bundles": bench_bundles}
        results: dict[str, Any] = {name: {"skipped": note} for name, note in skipped.items()}
        rows: list[Row] = [Row(name, note) for name, note in skipped.items()]
        try:
            status = run_selected(runners, only, settings, results, rows)
        finally:
            report(
                "packages",
                machine,
                rows,
                results,
                complete=status == 0,
                repeats=f"{settings.repeats} x {settings.seconds} s per server",
                settings={
                    "quick": args.quick,
                    "repeats": settings.repeats,
                    "seconds": settings.seconds,
                    "connections": settings.connections,
                    "wrk": shutil.which("wrk"),
                    "nginx": _nginx_version() if "serving" in only else None,
                },
                json_out=args.json_out,
            )
    return exit_status(results, status, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())

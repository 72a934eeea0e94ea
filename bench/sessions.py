"""Sessions benchmark: what signing in costs each request, and ending a tenant's sessions.

    python bench/sessions.py                   # full sizes
    python bench/sessions.py --quick           # smaller, for a smoke test
    python bench/sessions.py --json-out bench/out/sessions.json --check-targets

``validate``
    One app (``create_app`` on a fresh SQLite data dir) with two no-op routes added:
    ``GET /bench/open`` and ``GET /bench/auth`` (depends on ``current_principal``). The
    ASGI app is called in-process on one event loop (no sockets, no HTTP client), in
    interleaved batches of ``--batch`` requests, alternating which route goes first.
    Added cost = median per-request time of auth minus open; target <= 0.3 ms.
``tenant``
    A tenant with ``--users`` users holding 3 sessions each (rows inserted directly),
    then ``services.access.accounts.delete_tenant`` timed; every session must be gone.
    Target <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import Row, add_output_options, exit_status, log, machine_info, report, verdict, workdir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import Depends
from sqlalchemy import func, insert, select

from safekeeper.api.app import create_app
from safekeeper.api.auth import COOKIE, current_principal
from safekeeper.api.principal import Principal
from safekeeper.archive import Archive
from safekeeper.config import load_config, write_default
from safekeeper.db.models import Tenant, User
from safekeeper.db.session_models import LoginSession
from safekeeper.services.access import accounts, sessions
from safekeeper.services.access.login_throttle import LoginThrottle

BENCHMARKS = ("validate", "tenant")
VALIDATE_TARGET_MS = 0.3
TENANT_TARGET_S = 1.0
PASSWORD = "bench password"


def _open_archive(directory: Path) -> Archive:
    write_default(directory)
    return Archive(load_config(data_dir=directory))


async def _call(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8470),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _batch(app: Any, path: str, headers: list[tuple[bytes, bytes]], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        if await _call(app, path, headers) != 200:
            raise SystemExit(f"error: {path} did not answer 200")
    return (time.perf_counter() - start) / count


def bench_validate(work: Path, batches: int, batch: int) -> tuple[dict[str, Any], list[Row]]:
    archive = _open_archive(work / "validate")
    try:
        accounts.add_user(
            archive, "bench", tenant="bench", role="member", password=PASSWORD, create_tenant=True
        )
        throttle = LoginThrottle(10, archive.config.server.login_window)
        token, _ = accounts.sign_in(archive, throttle, "bench", PASSWORD)
        app = create_app(archive)

        @app.get("/bench/open")
        def bench_open() -> dict[str, bool]:
            return {"ok": True}

        @app.get("/bench/auth")
        def bench_auth(principal: Principal = Depends(current_principal)) -> dict[str, bool]:  # noqa: B008
            return {"ok": True}

        headers = [(b"host", b"127.0.0.1"), (b"cookie", f"{COOKIE}={token}".encode())]
        samples: dict[str, list[float]] = {"open": [], "auth": []}

        async def run() -> None:
            await _batch(app, "/bench/open", headers, batch)  # warm up both paths
            await _batch(app, "/bench/auth", headers, batch)
            for index in range(batches):
                order = ("open", "auth") if index % 2 == 0 else ("auth", "open")
                for name in order:
                    samples[name].append(await _batch(app, f"/bench/{name}", headers, batch))

        asyncio.run(run())
    finally:
        archive.close()
    open_ms = statistics.median(samples["open"]) * 1000
    auth_ms = statistics.median(samples["auth"]) * 1000
    added = auth_ms - open_ms
    passed = added <= VALIDATE_TARGET_MS
    result = {
        "open_ms": samples["open"],
        "auth_ms": samples["auth"],
        "median_open_ms": open_ms,
        "median_auth_ms": auth_ms,
        "added_ms": added,
        "batch": batch,
        "passed": passed,
    }
    rows = [
        Row(
            "validate",
            "ms per request (added)",
            f"{open_ms:.3f}",
            f"{auth_ms:.3f}",
            f"+{added:.3f} ms",
            f"<= +{VALIDATE_TARGET_MS} ms",
            verdict(passed),
        )
    ]
    return result, rows


def bench_tenant(work: Path, users: int) -> tuple[dict[str, Any], list[Row]]:
    archive = _open_archive(work / "tenant")
    try:
        password_hash = accounts.hash_password(PASSWORD)
        now = archive.clock()
        idle, absolute = (
            archive.config.server.session_idle_timeout,
            archive.config.server.session_absolute_timeout,
        )
        with archive.db.write() as session:
            tenant_id = session.execute(
                insert(Tenant).values(name="big", created_at=now).returning(Tenant.id)
            ).scalar_one()
            session.execute(
                insert(User),
                [
                    {
                        "tenant_id": tenant_id,
                        "name": f"user{n}",
                        "role": "member",
                        "password_hash": password_hash,
                        "created_at": now,
                    }
                    for n in range(users)
                ],
            )
            user_ids = list(session.scalars(select(User.id).where(User.tenant_id == tenant_id)))
        with archive.sessions_db.write() as session:
            session.execute(
                insert(LoginSession),
                [
                    {
                        "token_hash": sessions.hash_token(sessions.new_token()),
                        "user_id": user_id,
                        "tenant_id": tenant_id,
                        "created_at": now,
                        "last_seen": now,
                        "idle_expires_at": now + idle,
                        "absolute_expires_at": now + absolute,
                    }
                    for user_id in user_ids
                    for _ in range(3)
                ],
            )
        start = time.perf_counter()
        ended = accounts.delete_tenant(archive, "big")
        seconds = time.perf_counter() - start
        with archive.sessions_db.read() as session:
            left = session.scalar(select(func.count()).select_from(LoginSession))
    finally:
        archive.close()
    passed = seconds <= TENANT_TARGET_S and ended == users * 3 and left == 0
    result = {"users": users, "sessions_ended": ended, "left": left, "seconds": seconds}
    result["passed"] = passed
    rows = [
        Row(
            "tenant",
            f"delete tenant: {users} users, {ended} sessions",
            "",
            f"{seconds:.3f} s",
            f"{left} left",
            f"<= {TENANT_TARGET_S} s",
            verdict(passed),
        )
    ]
    return result, rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("--batches", type=int, help="validate: batches per route")
    parser.add_argument("--batch", type=int, default=200, help="validate: requests per batch")
    parser.add_argument("--users", type=int, help="tenant: users (3 sessions each)")
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from common import parse_only

    args = parse_args(argv)
    only = parse_only(args.only, BENCHMARKS)
    batches = args.batches or (5 if args.quick else 21)
    users = args.users or (300 if args.quick else 10_000)
    results: dict[str, Any] = {}
    rows: list[Row] = []
    with workdir(args.workdir, keep=args.keep) as work:
        machine = machine_info(work)
        if "validate" in only:
            log(f"validate: {batches} batches of {args.batch} requests per route")
            results["validate"], new_rows = bench_validate(work, batches, args.batch)
            rows += new_rows
        if "tenant" in only:
            log(f"tenant: {users} users x 3 sessions")
            results["tenant"], new_rows = bench_tenant(work, users)
            rows += new_rows
        report(
            "sessions",
            machine,
            rows,
            results,
            complete=True,
            repeats=f"{batches} batches x {args.batch}",
            settings={"quick": args.quick, "batches": batches, "batch": args.batch, "users": users},
            json_out=args.json_out,
        )
    return exit_status(results, 0, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())

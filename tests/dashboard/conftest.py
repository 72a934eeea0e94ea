"""A real ``safekeeper serve`` on a loopback port, and headless Chromium driving it.

The server runs as a subprocess over a temporary data directory with a one-second
grace period, so a blob the test unreferences becomes garbage a moment later. Users
are made with the account service before the server starts. Chromium is Debian's
``/usr/bin/chromium`` driven by Playwright through ``executable_path`` (no browser
download): missing, it fails the tests under CI and skips them elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from safekeeper.archive import Archive
from safekeeper.config import default_document, load_config
from safekeeper.services.access import accounts
from tests.util import free_port, unavailable

CHROMIUM = Path(os.environ.get("SAFEKEEPER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
PASSWORD = "correct horse battery"
#: name → role; all in tenant "acme"
USERS = {"ada": "admin", "oscar": "operator", "mia": "member", "rita": "member"}


@dataclass(frozen=True)
class Server:
    url: str
    data_dir: Path
    #: The package origin (the server's second listener).
    package_url: str = ""

    def archive(self) -> Archive:
        """The server's archive, opened in the test process (same SQLite files)."""
        return Archive(load_config(data_dir=self.data_dir, environ={}))


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"safekeeper serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"safekeeper serve did not answer within 30s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("dashboard") / "data"
    data_dir.mkdir()
    document: dict[str, Any] = default_document()
    document["policy"]["grace_period"] = "1s"
    package_port = free_port()
    document["server"] = {"package_port": package_port}
    (data_dir / "safekeeper.toml").write_text(tomli_w.dumps(document))
    with Archive(load_config(data_dir=data_dir, environ={})) as archive:
        accounts.add_tenant(archive, "acme")
        for name, role in USERS.items():
            accounts.add_user(archive, name, tenant="acme", role=role, password=PASSWORD)
    port = free_port()
    log = data_dir.parent / "serve.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "serve",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
        yield Server(url, data_dir, f"http://127.0.0.1:{package_port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def new_context(browser: Any, server: Server) -> Iterator[Any]:
    """Makes browser contexts (separate cookie jars) on the server; closes them after."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 860})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Any, user: str, password: str = PASSWORD, path: str = "/") -> None:
    page.goto(path)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if "/signin" in page.url:
        raise AssertionError(f"sign-in as {user} failed: {page.inner_text('main')}")


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

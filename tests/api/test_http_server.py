"""``safekeeper serve``'s uvicorn settings, on a real server over a loopback socket:
forwarded headers believed only from configured proxies, bounded request headers, no
``server`` header (issue 13, findings 5, 7 and 14)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from safekeeper.api.app import create_app
from safekeeper.api.auth import CSRF_HEADER
from safekeeper.api.http_server import uvicorn_options
from safekeeper.archive import Archive
from safekeeper.services.access import accounts
from tests.conftest import ArchiveFactory
from tests.util import free_port

PASSWORD = "correct horse battery"

Serve = Callable[..., str]


@pytest.fixture
def serve(make_archive: ArchiveFactory) -> Iterator[Serve]:
    """Starts a server with the given settings (environment overrides); returns its URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**env: str) -> str:
        archive: Archive = make_archive(**env)
        if not servers:  # the archives share one data directory
            accounts.add_user(
                archive,
                "alice",
                tenant="acme",
                role="member",
                password=PASSWORD,
                create_tenant=True,
            )
        port = free_port()
        config = uvicorn.Config(
            create_app(archive),
            host="127.0.0.1",
            port=port,
            **uvicorn_options(archive.config.server),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def _signed_in_address(url: str, **headers: str) -> str | None:
    with httpx.Client(base_url=url, headers=headers) as client:
        answer = client.post("/api/auth/login", json={"user": "alice", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        mine = [s for s in client.get("/api/auth/sessions").json() if s["current"]]
        address: str | None = mine[0]["ip"]
        return address


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(serve: Serve) -> None:
    spoof = {"X-Forwarded-For": "203.0.113.9"}
    assert _signed_in_address(serve(), **spoof) == "127.0.0.1"
    trusted = serve(SAFEKEEPER__SERVER__TRUSTED_PROXIES='["127.0.0.1"]')
    assert _signed_in_address(trusted, **spoof) == "203.0.113.9"


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        # The server may close while we still send: the answer is what counts.
        with contextlib.suppress(OSError):
            connection.sendall(request)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except OSError:
            pass
    return received


def test_request_headers_are_bounded_in_size_and_count(serve: Serve) -> None:
    url = serve(
        SAFEKEEPER__SERVER__MAX_HEADER_SIZE="16KiB", SAFEKEEPER__SERVER__MAX_HEADER_COUNT="20"
    )
    huge = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024 * 1024)
    answer = _raw(url, huge + b"\r\n\r\n")
    # h11 gives up at the limit, while the line is still arriving: a 4xx, not 1 MiB held.
    assert answer.startswith(b"HTTP/1.1 4") or answer == b"", answer[:100]
    many = b"".join(b"X-H%d: v\r\n" % n for n in range(30))
    answer = _raw(url, b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"code":"headers_too_large"' in answer
    fine = httpx.get(f"{url}/api/health")
    assert fine.status_code == 200
    assert "server" not in fine.headers


def test_a_dashboard_import_stops_reading_at_the_upload_limit(serve: Serve) -> None:
    """A chunked multipart body with no Content-Length: the server answers 413 having
    read about the limit, not the 200 MiB sent (finding 4: size limits while streaming)."""
    url = serve(SAFEKEEPER__SERVER__MAX_UPLOAD_SIZE="1MiB")
    sent = [0]

    def body(prefix: bytes) -> Iterator[bytes]:
        sent[0] += len(prefix)
        yield prefix
        chunk = b"\0" * (256 * 1024)
        while sent[0] < 200 * 1024 * 1024:
            sent[0] += len(chunk)
            yield chunk

    with httpx.Client(base_url=url, timeout=30) as client:
        login = client.post("/api/auth/login", json={"user": "alice", "password": PASSWORD})
        csrf = login.json()["csrf_token"]
        boundary = "b0undary"
        prefix = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
            f'{csrf}\r\n--{boundary}\r\nContent-Disposition: form-data; name="bundle"; '
            'filename="b.tar"\r\nContent-Type: application/x-tar\r\n\r\n'
        ).encode()
        try:
            answer = client.post(
                "/namespaces/x/import",
                content=body(prefix),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            status: int | None = answer.status_code
        except httpx.TransportError:
            status = None  # the server closed on us mid-send: it stopped reading too
    assert status in (413, None)
    assert sent[0] < 16 * 1024 * 1024, sent[0]


@pytest.mark.parametrize("size", [10_000, 3 * 1024 * 1024 + 5])
def test_a_copy_that_rotted_is_never_served_whole(serve: Serve, data_dir: Path, size: int) -> None:
    """A download streams from a copy whose bytes may have rotted since the last
    verify: the whole body is checked against the blob id on the way, and the last
    chunk waits for that check, so a client gets the blob or a response cut short —
    never a complete 200 of the wrong bytes under the blob's ETag."""
    url = serve()
    data = os.urandom(size)
    sha = hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=url) as client:
        answer = client.post("/api/auth/login", json={"user": "alice", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        csrf = {CSRF_HEADER: answer.json()["csrf_token"]}
        stored = client.post("/api/blobs?ref=acme.course:f", content=data, headers=csrf)
        assert stored.status_code == 201, stored.text
        assert client.get(f"/api/blobs/{sha}").content == data
        path = data_dir / "inbox" / sha[:2] / sha[2:4] / sha
        before = path.stat()
        path.chmod(0o644)
        with path.open("r+b") as f:
            f.seek(size - 1)  # the very last byte: only the check can catch it
            f.write(bytes([data[-1] ^ 0xFF]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        with client.stream("GET", f"/api/blobs/{sha}") as response:
            assert response.status_code == 200
            received = b""
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in response.iter_bytes():
                    received += chunk
        assert len(received) < size
        assert received == data[: len(received)]  # what came is the blob's, as far as it went

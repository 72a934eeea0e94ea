"""The package origin: content only by capability, never on the dashboard's origin,
never by the dashboard's cookie; every refusal a 4xx JSON code; security headers on
every answer. (The browser side — a hostile package — is tests/dashboard/test_hostile.py.)"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from safekeeper.api.app import create_app
from safekeeper.api.package_origin import create_package_app
from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.errors import ConfigError
from safekeeper.packages import capabilities
from safekeeper.packages.capabilities import BlobTarget, Capability, RefTarget, encode
from safekeeper.services.access import accounts
from tests.api.accounts import Accounts, add_accounts
from tests.api.test_serving import put_package
from tests.conftest import FakeClock
from tests.packages import zips


class Origins:
    def __init__(self, archive: Archive, made: Accounts) -> None:
        self.archive = archive
        self.made = made
        self.secret = capabilities.load_secret(archive.config)
        self.main = TestClient(create_app(archive), base_url="http://127.0.0.1")
        self.packages = TestClient(
            create_package_app(archive), base_url=archive.config.server.package_base
        )

    def user_id(self, name: str) -> int:
        return accounts.user_id_of(self.archive, name)

    def capability(
        self, user: str, target: capabilities.Target, seconds: float = 600, secret: bytes = b""
    ) -> str:
        expires = int(self.archive.clock().timestamp() + seconds)
        return encode(secret or self.secret, Capability(self.user_id(user), target, expires))


@pytest.fixture
def origins(archive: Archive) -> Iterator[tuple[Origins, str, str]]:
    """SQLite and PostgreSQL: acme's package ``acme-courses:intro`` (marker ``acme``)
    and other's ``other-courses:x`` (marker ``other``); their blob ids."""
    made = add_accounts(archive)
    acme = put_package(
        archive, zips.build_html_package(marker=b"acme"), "acme-courses:intro", tenant="acme"
    )
    other = put_package(
        archive, zips.build_html_package(marker=b"other"), "other-courses:x", tenant="other"
    )
    found = Origins(archive, made)
    with found.main, found.packages:
        yield found, acme, other


ACME = RefTarget("acme-courses", "intro", "default")


def test_p_urls_redirect_to_a_fresh_capability_and_serve_nothing(
    origins: tuple[Origins, str, str],
) -> None:
    o, acme, _ = origins
    for url in (f"/p/blob/{acme}/index.html?x=1", "/p/acme-courses/intro/default/index.html"):
        response = o.main.get(url, headers=o.made.headers("alice"), follow_redirects=False)
        assert response.status_code == 307, url
        assert response.content == b""
        assert response.headers["cache-control"] == "no-store"
        location = urlsplit(response.headers["location"])
        assert f"{location.scheme}://{location.netloc}" == o.archive.config.server.package_base
        assert location.path.startswith("/c/") and location.path.endswith("/index.html")
        # The dashboard's origin does not serve capability URLs.
        assert o.main.get(location.path).status_code == 404
        followed = o.packages.get(f"{location.path}?{location.query}")
        assert followed.status_code == 200 and followed.content.endswith(b"acme")


def test_every_answer_carries_the_security_headers_and_no_cookie(
    origins: tuple[Origins, str, str],
) -> None:
    o, acme, _ = origins
    good = o.capability("alice", BlobTarget(acme))
    etag = o.packages.get(f"/c/{good}/index.html").headers["etag"]
    answers = {
        200: o.packages.get(f"/c/{good}/index.html"),
        304: o.packages.get(f"/c/{good}/index.html", headers={"If-None-Match": etag}),
        206: o.packages.get(f"/c/{good}/index.html", headers={"Range": "bytes=0-1"}),
        404: o.packages.get(f"/c/{good}/nothing.html"),
        403: o.packages.get(f"/c/{good}x/index.html"),
        405: o.packages.post(f"/c/{good}/index.html"),
    }
    for status, response in answers.items():
        assert response.status_code == status
        policy = response.headers["content-security-policy"]
        assert "sandbox allow-scripts" in policy and "allow-top-navigation" not in policy
        assert "frame-ancestors 'self' http://127.0.0.1:8470 http://localhost:8470;" in policy
        assert "connect-src 'self'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in response.headers
    assert o.packages.get("/anything").json()["code"] == "not_found"
    assert o.packages.get("/p/acme-courses/intro/default/index.html").status_code == 404


def test_the_dashboards_cookie_and_tokens_authorise_nothing_there(
    origins: tuple[Origins, str, str],
) -> None:
    o, acme, _ = origins
    o.main.post(
        "/api/auth/login", json={"user": "root", "password": "correct horse battery staple"}
    )
    cookie = o.main.cookies.get("sk_session")
    assert cookie
    for headers in (
        {"Cookie": f"sk_session={cookie}"},
        o.made.headers("root"),
    ):
        response = o.packages.get("/c/x.y/index.html", headers=headers)
        assert (response.status_code, response.json()["code"]) == (403, "capability_invalid")
        assert o.packages.get(f"/p/blob/{acme}/index.html", headers=headers).status_code == 404


def _tamper(capability: str, **changes: object) -> str:
    """``capability`` with its payload changed and its old MAC kept."""
    import base64
    import json

    payload, _, mac = capability.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


def test_capability_refusals(
    origins: tuple[Origins, str, str], clock: FakeClock, archive: Archive
) -> None:
    o, _, other = origins
    alice = o.capability("alice", ACME)
    assert o.packages.get(f"/c/{alice}/index.html").content.endswith(b"acme")
    payload, _, mac = alice.partition(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    cases = {
        "tampered MAC": (f"{payload}.{flipped}", 403, "capability_invalid"),
        "no MAC": (payload, 403, "capability_invalid"),
        "another secret": (
            o.capability("alice", ACME, secret=b"s" * 43),
            403,
            "capability_invalid",
        ),
        "another package": (
            _tamper(alice, n="other-courses", k="x"),
            403,
            "capability_invalid",
        ),
        "another blob": (_tamper(alice, b=other), 403, "capability_invalid"),
        "another viewer": (_tamper(alice, u=o.user_id("root")), 403, "capability_invalid"),
        "later expiry": (_tamper(alice, e=2**40), 403, "capability_invalid"),
        "expired": (o.capability("alice", ACME, seconds=-1), 403, "capability_expired"),
        "not json": ("bm90IGpzb24.abc", 403, "capability_invalid"),
        "huge": ("a" * 5000 + ".b", 403, "capability_invalid"),
        # Signed, but for a package alice may not see: what a missing one answers.
        "other tenant's package": (
            o.capability("alice", RefTarget("other-courses", "x", "default")),
            404,
            "not_found",
        ),
        "other tenant's blob": (o.capability("alice", BlobTarget(other)), 404, "not_found"),
        "no such reference": (
            o.capability("alice", RefTarget("acme-courses", "nothing", "default")),
            404,
            "not_found",
        ),
    }
    for name, (capability, status, code) in cases.items():
        response = o.packages.get(f"/c/{capability}/index.html")
        assert (response.status_code, response.json()["code"]) == (status, code), name
        assert b"acme" not in response.content and b"other" not in response.content[-5:]
    # A capability never reaches outside its package.
    for path in ("../other-courses/x/default/index.html", "%2e%2e/index.html", "/index.html"):
        response = o.packages.get(f"/c/{alice}/{path}")
        assert response.status_code in (403, 404), path
        assert not response.content.endswith(b"other")

    # Expiry follows the clock.
    short = o.capability("alice", ACME, seconds=60)
    assert o.packages.get(f"/c/{short}/index.html").status_code == 200
    clock.advance(seconds=61)
    expired = o.packages.get(f"/c/{short}/index.html")
    assert (expired.status_code, expired.json()["code"]) == (403, "capability_expired")


def test_a_capability_is_rechecked_against_its_viewer_on_every_use(
    origins: tuple[Origins, str, str], archive: Archive
) -> None:
    o, _, _ = origins
    alice, bob = o.capability("alice", ACME), o.capability("bob", ACME)
    url = f"/c/{alice}/index.html"
    assert o.packages.get(url).status_code == 200
    accounts.set_disabled(archive, "alice", True)
    refused = o.packages.get(url)
    assert (refused.status_code, refused.json()["code"]) == (403, "capability_revoked")
    accounts.set_disabled(archive, "alice", False)
    assert o.packages.get(url).status_code == 200
    assert o.packages.get(f"/c/{bob}/index.html").status_code == 200
    accounts.delete_users(archive, ["bob"])
    refused = o.packages.get(f"/c/{bob}/index.html")
    assert (refused.status_code, refused.json()["code"]) == (403, "capability_revoked")


def test_the_secret_is_made_private_once_and_a_readable_one_is_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    config = load_config(data_dir=data_dir, environ={})
    first = capabilities.load_secret(config)
    path = data_dir / capabilities.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert capabilities.load_secret(config) == first and len(first) >= 32
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        capabilities.load_secret(config)
    configured = load_config(
        data_dir=tmp_path / "other", environ={"SAFEKEEPER__SERVER__PACKAGE_SECRET": "k" * 40}
    )
    assert capabilities.load_secret(configured) == b"k" * 40
    assert not (tmp_path / "other" / capabilities.SECRET_FILE).exists()


def test_the_package_origin_must_differ_from_the_dashboards(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="package_origin must differ"):
        load_config(
            data_dir=data_dir,
            environ={"SAFEKEEPER__SERVER__PACKAGE_ORIGIN": "http://127.0.0.1:8470"},
        )
    with pytest.raises(ConfigError, match="capability_ttl"):
        load_config(data_dir=data_dir, environ={"SAFEKEEPER__SERVER__CAPABILITY_TTL": "30s"})

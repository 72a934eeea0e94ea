"""``[server]``: the HTTP API, package serving and the dashboard (``safekeeper serve``)."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

from pydantic import field_validator, model_validator

from safekeeper.config_values import Strict, duration, size


class ServerConfig(Strict):
    """``safekeeper serve``: the HTTP API, package serving and the dashboard."""

    host: str = "127.0.0.1"
    port: int = 8470
    session_idle_timeout: timedelta = timedelta(minutes=30)
    session_absolute_timeout: timedelta = timedelta(hours=12)
    #: Uploads larger than this get 413 before anything is stored.
    max_upload_size: int = 4 * 1024**3
    #: Failed sign-ins allowed per account and per client address in ``login_window``.
    login_attempts: int = 10
    login_window: timedelta = timedelta(minutes=15)
    #: Cookies get ``Secure`` unless this is false; default: secure except when serving
    #: plain HTTP on a loopback address.
    secure_cookies: bool | None = None
    #: The dashboard's origin as browsers see it (``https://safekeeper.example.org``):
    #: the only origin (with ``embed_origins``) that may frame packages. Default:
    #: ``http://HOST:PORT`` (and ``http://localhost:PORT`` for a loopback host).
    public_origin: str | None = None
    #: Where package content is served: an origin distinct from the dashboard's, so a
    #: package's script never runs with a viewer's authority (design.md, invariant 13).
    #: Default: ``http://HOST:PACKAGE_PORT``, a second listener of ``safekeeper serve``.
    package_origin: str | None = None
    #: The second listener's port; default: ``port + 1``.
    package_port: int | None = None
    #: Origins of other applications allowed to frame launch URLs (``POST …/launch``).
    embed_origins: tuple[str, ...] = ()
    #: How long a package capability URL is valid (1 minute to 24 hours).
    capability_ttl: timedelta = timedelta(hours=2)
    #: The HMAC key of capability URLs; default: ``package-secret`` in the data
    #: directory (made on first use, mode 0600). Set it when several servers share work.
    package_secret: str | None = None
    #: Addresses (IPs or CIDR networks) of reverse proxies whose ``X-Forwarded-For`` and
    #: ``X-Forwarded-Proto`` are believed. None by default: the peer address is the
    #: client, whatever headers it sends (throttling and session lists use it).
    trusted_proxies: list[str] = []
    #: A request whose header block grows past this many bytes is refused (431) while
    #: it is still being read; at most ``max_header_count`` header lines.
    max_header_size: int = 64 * 1024
    max_header_count: int = 100
    #: An account's failed sign-ins past ``login_free_attempts`` in ``login_window`` make
    #: the next attempt wait, doubling from ``login_backoff`` up to ``login_max_backoff``:
    #: a guesser slows down, the owner is never locked out for long.
    login_free_attempts: int = 3
    login_backoff: timedelta = timedelta(seconds=1)
    login_max_backoff: timedelta = timedelta(seconds=60)

    _durations = field_validator(
        "session_idle_timeout",
        "session_absolute_timeout",
        "login_window",
        "capability_ttl",
        "login_backoff",
        "login_max_backoff",
        mode="before",
    )(duration)

    _sizes = field_validator("max_upload_size", "max_header_size", mode="before")(size)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address or network"
                ) from None
        return value

    @field_validator("capability_ttl")
    @classmethod
    def _capability_ttl(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= value <= timedelta(hours=24):
            raise ValueError("capability_ttl must be between 1 minute and 24 hours")
        return value

    @field_validator("public_origin", "package_origin")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is not None:
            value = _checked_origin(value)
        return value

    @field_validator("embed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_checked_origin(origin) for origin in value)

    @field_validator("package_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("package_secret must be at least 32 characters")
        return value

    @property
    def dashboard_origin(self) -> str:
        return self.public_origin or f"http://{_url_host(self.host)}:{self.port}"

    @property
    def package_listen_port(self) -> int:
        return self.package_port if self.package_port is not None else self.port + 1

    @property
    def package_base(self) -> str:
        """The package origin (no trailing slash)."""
        return self.package_origin or f"http://{_url_host(self.host)}:{self.package_listen_port}"

    @property
    def framing_origins(self) -> tuple[str, ...]:
        """Who may frame package pages: the dashboard (by each name of a loopback host)
        and the configured embedders."""
        origins = [self.dashboard_origin]
        if self.public_origin is None and self.host in ("127.0.0.1", "::1", "localhost"):
            origins += [f"http://localhost:{self.port}", f"http://127.0.0.1:{self.port}"]
        origins += self.embed_origins
        return tuple(dict.fromkeys(origins))

    @model_validator(mode="after")
    def _distinct_origins(self) -> ServerConfig:
        if self.package_base in self.framing_origins:
            raise ValueError(
                "package_origin must differ from the dashboard's origin and embed_origins"
            )
        return self


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _checked_origin(value: str) -> str:
    """``scheme://host[:port]``, lower-cased, no path: what browsers compare."""
    origin = value.strip().rstrip("/").lower()
    scheme, sep, rest = origin.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "/?# "):
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port], no path)")
    return origin

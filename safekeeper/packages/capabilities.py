"""Capability URLs: what lets a browser read one package on the package origin.

A capability is one URL path segment, ``<payload>.<mac>``: the payload (base64url of
compact JSON) names one viewer (user id), one package — a blob (``b``: its SHA-256)
or a reference (``n``, ``k``, ``l``: namespace, key, label) — and an expiry (``e``,
Unix seconds); the MAC is HMAC-SHA-256 of the payload under the server's secret. The
member path follows it (``/c/<capability>/<member>``), so a package's relative links
keep working and never leave the capability's package.

``decode`` is pure: it checks form, MAC and expiry and answers the payload, or raises
``CapabilityRefused`` with the code a client branches on. Who the viewer is now
(disabled? deleted? may they still see the package?) is checked by the caller on
every use, against the database.

The secret comes from the configuration (``server.package_secret``, shared by every
server of a distributed deployment) or from ``package-secret`` in the data directory,
made on first use with mode 0600 (``load_secret``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from safekeeper.config import Config
from safekeeper.errors import ConfigError, SafekeeperError

SECRET_FILE = "package-secret"
#: A capability segment longer than this is no capability (keys are ≤ 1 KiB).
MAX_CAPABILITY = 4096


class CapabilityRefused(SafekeeperError):
    """A capability URL that grants nothing (HTTP 403). ``code``: ``capability_invalid``
    (malformed, or its MAC does not match: tampered, or made with another secret),
    ``capability_expired``, ``capability_revoked`` (the viewer is disabled or deleted)."""

    code = "capability_invalid"
    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class BlobTarget:
    sha256: str


@dataclass(frozen=True)
class RefTarget:
    namespace: str
    key: str
    label: str


Target = BlobTarget | RefTarget


@dataclass(frozen=True)
class Capability:
    user_id: int
    target: Target
    #: Unix seconds.
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def encode(secret: bytes, capability: Capability) -> str:
    body: dict[str, object] = {"u": capability.user_id, "e": capability.expires}
    target = capability.target
    if isinstance(target, BlobTarget):
        body["b"] = target.sha256
    else:
        body.update(n=target.namespace, k=target.key, l=target.label)
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{payload}.{_mac(secret, payload)}"


def decode(secret: bytes, text: str, now: float) -> Capability:
    """The capability ``text`` grants at ``now`` (Unix seconds), or CapabilityRefused."""
    capability = _verified(secret, text)
    if now >= capability.expires:
        raise CapabilityRefused("capability_expired", "this package link has expired")
    return capability


@lru_cache(maxsize=4096)
def _verified(secret: bytes, text: str) -> Capability:
    """Form and MAC (remembered: a page's members all carry the same capability)."""
    payload, dot, mac = text.partition(".")
    if not dot or len(text) > MAX_CAPABILITY or not hmac.compare_digest(mac, _mac(secret, payload)):
        raise CapabilityRefused("capability_invalid", "not a valid package link")
    try:
        body = json.loads(_unb64(payload))
        user_id, expires = body["u"], body["e"]
        target: Target = (
            BlobTarget(body["b"]) if "b" in body else RefTarget(body["n"], body["k"], body["l"])
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        # A valid MAC over a bad payload: only a bug or a leaked secret makes one.
        raise CapabilityRefused("capability_invalid", "not a valid package link") from exc
    if not isinstance(user_id, int) or not isinstance(expires, int):
        raise CapabilityRefused("capability_invalid", "not a valid package link")
    return Capability(user_id, target, expires)


def load_secret(config: Config) -> bytes:
    """The configured secret, or the data directory's (created 0600 on first use; an
    existing file readable by others is refused rather than trusted)."""
    if config.server.package_secret is not None:
        return config.server.package_secret.encode()
    path = config.data_dir / SECRET_FILE
    if not path.exists():
        # Written whole under a temporary name, then linked into place: a concurrent
        # first start either links first or reads the winner's complete file.
        temp = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(8)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(secrets.token_urlsafe(32))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            temp.unlink()
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{path}: mode {mode:o} lets others read the package secret; chmod 600 it"
        )
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < 32:
        raise ConfigError(f"{path}: the package secret is shorter than 32 characters")
    return secret.encode()

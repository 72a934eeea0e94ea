"""Where a location's store really is, to refuse two locations on one store when the
configuration loads (``check_distinct_stores``; docs/design.md, "Store identity")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from safekeeper.errors import ConfigError

if TYPE_CHECKING:
    from safekeeper.config import Config


def same_store_url(a: str, b: str) -> bool:
    """Do two resolved store URLs name one store? (``file:/x``, ``file:///x/`` and
    ``file://localhost/x`` do; symlinks are the marker's business.)"""
    return _normal_url(a) == _normal_url(b)


def _normal_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() == "file" and parts.netloc in ("", "localhost"):
        path = unquote(parts.path)
        if path.startswith("/"):
            return Path(os.path.normpath(path)).as_uri()
    if parts.scheme.lower() == "s3":
        return f"s3://{parts.netloc}/{parts.path.strip('/')}"
    return url


def _place(config: Config, name: str) -> tuple[str, ...] | None:
    """Where a location's store really is, for comparing: ("file", real path),
    ("s3", endpoint, bucket, prefix) or ("memory", name); None when the URL is
    malformed (opening the store reports that)."""
    url = config.store_url(name)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = unquote(parts.path)
        return ("file", os.path.realpath(path)) if path.startswith("/") else None
    if scheme == "s3":
        endpoint = (config.locations[name].endpoint or "").rstrip("/")
        return ("s3", endpoint, parts.netloc, parts.path.strip("/"))
    if scheme == "memory":
        return ("memory", (parts.netloc + parts.path).strip("/"))
    return None


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> str | None:
    """How the store at ``a`` shares objects with the one at ``b`` (a phrase ending
    before "locations.NAME.store"), or None if it does not."""
    if a[0] != b[0]:
        return None
    if a == b:
        return f"the same place ({a[-1]}) as"
    if a[0] == "file":
        inner, outer = Path(a[1]), Path(b[1])
        if inner.is_relative_to(outer):
            return f"inside ({a[1]} is under {b[1]})"
        if outer.is_relative_to(inner):
            return f"around ({b[1]} is under {a[1]})"
    if a[0] == "s3" and a[1:3] == b[1:3]:
        pa, pb = a[3], b[3]
        if not pa or not pb or pa.startswith(pb + "/") or pb.startswith(pa + "/"):
            return f"in bucket {a[2]} on a prefix overlapping that of"
    return None


def check_distinct_stores(config: Config) -> None:
    """Refuse two locations whose stores resolve to one place (symlinks, ``dir`` and
    ``dir/``, one root inside another, one bucket with overlapping prefixes, one
    memory name): one object would count as two copies, and gc would delete the only
    one (see docs/design.md, "Store identity"). The stores' identity markers catch what
    this cannot see (bind mounts, two endpoints of one server)."""
    origin = str(config.source) if config.source else "the configuration"
    seen: list[tuple[str, tuple[str, ...]]] = []
    for name in config.locations:
        place = _place(config, name)
        if place is None:
            continue
        for other, other_place in seen:
            reason = _overlap(place, other_place)
            if reason is not None:
                raise ConfigError(
                    f"{origin}: locations.{name}.store: {config.store_url(name)} is {reason} "
                    f"locations.{other}.store ({config.store_url(other)}): two locations "
                    "on one store would count one object as two copies"
                )
        seen.append((name, place))

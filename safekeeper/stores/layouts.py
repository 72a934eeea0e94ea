"""Key policy and the on-disk layouts of the filesystem store.

Every store accepts the same keys (``validate_key``): a single path segment of
letters, digits, ``.``, ``_`` and ``-`` that starts with a letter or digit and never
contains ``..``. Keys are things like a 64-hex SHA-256, a decimal integer or a short
name such as ``obj-1``. Keeping the policy this narrow means a key can never escape
the store root, collide with the filesystem store's ``.tmp`` directory, or be
rewritten by an S3 client's path normalisation.

A layout maps a key to a relative POSIX path under the store root and back. All
three layouts end the path with the key itself, so a directory walk recovers keys
from file names; ``key_for_path`` checks the rest of the path matches.

``fanout`` (default)
    ``ab/cd/<key>`` from the first four characters. Spreads content hashes over
    65,536 directories so none grows huge. The first four characters must be
    ``[0-9a-z]`` (lower case, so case-insensitive filesystems cannot merge
    directories).
``flat``
    ``<key>`` directly in the root. Fine for small stores.
``interval``
    Decimal integer keys only (``0`` or no leading zeros), for stores whose keys
    are sequence numbers. With ``s = interval_size`` (default 1000) the path of key
    ``n`` is ``f"{n // (s*s)}/{(n // s) % s}/{n}"``: ``1234567`` is ``1/234/1234567``.
    Each second-level directory holds at most ``s`` consecutive keys and each
    top-level directory at most ``s`` second-level ones; the top level grows
    without bound (``n // s**2``), which only matters past ``s**3`` keys. Integer
    arithmetic keeps it exact for arbitrarily large keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from safekeeper.errors import BadInput

#: Names of the filesystem layouts, default first.
LAYOUTS = ("fanout", "flat", "interval")
DEFAULT_INTERVAL_SIZE = 1000
MAX_KEY_LENGTH = 255  # a single file name on every common filesystem

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]*")
_FANOUT_HEAD_RE = re.compile(r"[0-9a-z]{4}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")


def validate_key(key: str) -> str:
    """Return ``key`` if every store accepts it, else raise BadInput."""
    if not isinstance(key, str):
        raise BadInput(f"store key must be a string, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadInput(f"store key must be 1 to {MAX_KEY_LENGTH} characters: {key!r}")
    # fullmatch with an ASCII-only class rejects '/', NUL, whitespace and non-ASCII;
    # the first character class rejects a leading dot.
    if not _KEY_RE.fullmatch(key) or ".." in key:
        raise BadInput(
            f"bad store key {key!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, without '..'"
        )
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it could begin a valid key (or is empty), else BadInput."""
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH:
        raise BadInput(f"bad key prefix {prefix!r}")
    if not _PREFIX_RE.fullmatch(prefix) or prefix.startswith(".") or ".." in prefix:
        raise BadInput(f"bad key prefix {prefix!r}: it can never begin a valid key")
    return prefix


def fanout_path(key: str) -> str:
    validate_key(key)
    if not _FANOUT_HEAD_RE.match(key):
        raise BadInput(
            f"key {key!r} does not fit the fanout layout: it needs at least 4 "
            "characters and the first 4 must be [0-9a-z]"
        )
    return f"{key[0:2]}/{key[2:4]}/{key}"


def flat_path(key: str) -> str:
    return validate_key(key)


def interval_path(key: str, interval_size: int = DEFAULT_INTERVAL_SIZE) -> str:
    validate_key(key)
    if not _DECIMAL_RE.fullmatch(key):
        raise BadInput(
            f"key {key!r} does not fit the interval layout: it takes decimal integers "
            "without leading zeros"
        )
    size = check_interval_size(interval_size)
    n = int(key)
    return f"{n // (size * size)}/{(n // size) % size}/{n}"


def check_interval_size(interval_size: object) -> int:
    """Return ``interval_size`` as an int >= 2, else raise BadInput."""
    if isinstance(interval_size, bool) or not isinstance(interval_size, int):
        raise BadInput(f"interval_size must be an integer, not {interval_size!r}")
    if interval_size < 2:
        raise BadInput(f"interval_size must be at least 2, not {interval_size}")
    return interval_size


@dataclass(frozen=True)
class Layout:
    """A named layout bound to its parameters (only ``interval`` has one)."""

    name: str = "fanout"
    interval_size: int = DEFAULT_INTERVAL_SIZE

    def __post_init__(self) -> None:
        if self.name not in LAYOUTS:
            raise BadInput(f"unknown layout {self.name!r}: expected one of {', '.join(LAYOUTS)}")
        check_interval_size(self.interval_size)

    def path_for_key(self, key: str) -> str:
        """The relative POSIX path of ``key``; BadInput if the key does not fit."""
        if self.name == "fanout":
            return fanout_path(key)
        if self.name == "flat":
            return flat_path(key)
        return interval_path(key, self.interval_size)

    def key_for_path(self, relpath: str) -> str:
        """The key stored at ``relpath``; BadInput if no key of this layout lives there."""
        key = relpath.rsplit("/", 1)[-1]
        if self.path_for_key(key) != relpath:
            raise BadInput(f"{relpath!r} is not where the {self.name} layout keeps {key!r}")
        return key

    def dir_for_prefix(self, prefix: str) -> str:
        """The deepest relative directory that holds every key starting with ``prefix``.

        Lets a listing skip most of a fanout tree; ``""`` means walk everything.
        """
        if self.name != "fanout" or len(prefix) < 2:
            return ""
        if len(prefix) < 4:
            return prefix[0:2]
        return f"{prefix[0:2]}/{prefix[2:4]}"


def get_layout(name: str = "fanout", interval_size: int = DEFAULT_INTERVAL_SIZE) -> Layout:
    """The layout called ``name``; BadInput for an unknown name or bad size."""
    return Layout(name, interval_size)

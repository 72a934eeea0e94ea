"""``safekeeper.toml``: sites, locations and policy, with environment overrides.

Where the configuration comes from, first match wins:

1. an explicit path (``--config`` / ``open_archive(config=...)``) or ``SAFEKEEPER_CONFIG``;
2. ``<data dir>/safekeeper.toml`` when a data dir is given (``--data-dir``,
   ``SAFEKEEPER_DATA_DIR``) or the default ``./safekeeper-data`` holds one;
3. ``./safekeeper.toml``;
4. the built-in default: ``./safekeeper-data`` with an ``inbox``, an ``archive``, a
   ``cache`` and a ``scratch`` (processing) location.

Environment overrides apply on top of any of them: ``SAFEKEEPER__POLICY__GRACE_PERIOD=1h``
sets ``[policy] grace_period``; values are read as TOML literals when they parse as one
(``2``, ``true``, ``["a", "b"]``) and as strings otherwise. ``SAFEKEEPER_DATABASE_URL`` is
a shortcut for ``SAFEKEEPER__DATABASE__URL``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safekeeper.config_server import ServerConfig
from safekeeper.config_values import (
    Strict,
    at_least,
    duration,
    positive_duration,
    size,
    size_or_fraction,
)
from safekeeper.errors import BadInput, ConfigError
from safekeeper.store_places import check_distinct_stores
from safekeeper.units import parse_size

CONFIG_NAME = "safekeeper.toml"
DEFAULT_DATA_DIR = Path("safekeeper-data")
ENV_PREFIX = "SAFEKEEPER__"

LocationKind = Literal["source", "buffer", "archive", "processing", "cache"]


class SiteConfig(Strict):
    description: str = ""


class LocationConfig(Strict):
    kind: LocationKind
    store: str
    site: str = "local"
    # filesystem stores
    layout: Literal["fanout", "flat", "interval"] = "fanout"
    interval_size: int = 1000
    # S3 stores (credentials usually come from the AWS_* environment)
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    allow_http: bool | None = None
    # policy knobs
    retention: timedelta | None = None
    capacity: int | None = None
    high_watermark: int | float | None = None
    low_watermark: int | float | None = None
    replicate_to: tuple[str, ...] = ()
    delete_after_copies_at: tuple[str, ...] = ()

    _duration_fields = field_validator("retention", mode="before")(duration)
    _watermark_fields = field_validator("high_watermark", "low_watermark", mode="before")(
        size_or_fraction
    )

    @field_validator("capacity", mode="before")
    @classmethod
    def _capacity(cls, value: Any) -> int | None:
        try:
            return None if value is None else parse_size(value)
        except BadInput as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("interval_size")
    @classmethod
    def _interval(cls, value: int) -> int:
        if value < 2:
            raise ValueError("interval_size must be at least 2")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LocationConfig:
        scheme = self.store.split(":", 1)[0].lower()
        if scheme not in ("file", "memory", "s3"):
            raise ValueError(f"store {self.store!r} must start with file:, memory:// or s3://")
        marks = (self.high_watermark, self.low_watermark)
        if (marks[0] is None) != (marks[1] is None):
            raise ValueError("set both high_watermark and low_watermark, or neither")
        if any(isinstance(m, float) for m in marks) and self.capacity is None:
            raise ValueError("fractional watermarks need a capacity")
        return self

    def store_options(self) -> dict[str, Any]:
        """The options ``open_store`` takes for this location's backend."""
        scheme = self.store.split(":", 1)[0].lower()
        if scheme == "file":
            return {"layout": self.layout, "interval_size": self.interval_size}
        if scheme == "s3":
            names = ("endpoint", "region", "access_key_id", "secret_access_key", "allow_http")
            return {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        return {}


class PolicyConfig(Strict):
    #: Verified archive copies needed before a copy elsewhere may go. 0 drops the
    #: archive requirement, never the floor: the copy still goes only while another
    #: copy is re-confirmed in its store.
    min_archive_copies: int = 1
    grace_period: timedelta = timedelta(days=7)
    #: A verification older than this no longer counts: a copy relied upon must have
    #: been re-hashed (by ``verify``, a transfer or gc) within it. It bounds how long a
    #: change the fingerprint cannot see (docs/design.md) can go unnoticed.
    verify_max_age: timedelta | None = timedelta(days=30)
    max_retries: int = 5
    #: Where ``put`` stores new blobs; default: the first ``source`` location.
    ingest_location: str | None = None
    #: Copies claimed and deleted per batch by ``gc``. Big: a batch's fixed costs (three
    #: committed transactions, the stores' marker reads, a thread pool of unlinks that
    #: share the disk's journal commits) are paid once per batch (bench/RESULTS.md,
    #: "Issue 17: gc, round two").
    gc_batch_size: int = 10_000
    #: Before a delete, gc re-hashes the last other copy when it is at most this big
    #: (bigger ones are checked by fingerprint only).
    gc_rehash_max_size: int = 64 * 1024**2
    #: The longest a gc batch may spend re-confirming copies: checks not started by
    #: then are skipped, and their copies kept (released) for the next run.
    gc_batch_deadline: timedelta = timedelta(minutes=2)
    #: A copy left ``deleting`` longer than this belongs to a gc that died; the next gc
    #: finishes or undoes its work. At least twice ``gc_batch_deadline``: the
    #: re-confirmation, then the delete and its record, must fit in it.
    gc_claim_timeout: timedelta = Field(default=timedelta(minutes=10), validate_default=True)

    _durations = field_validator(
        "grace_period", "verify_max_age", "gc_batch_deadline", "gc_claim_timeout", mode="before"
    )(duration)
    _positive = field_validator("verify_max_age", "gc_batch_deadline", "gc_claim_timeout")(
        positive_duration
    )
    _sizes = field_validator("gc_rehash_max_size", mode="before")(size)
    _non_negative = field_validator("min_archive_copies")(at_least(0))
    _one_or_more = field_validator("max_retries", "gc_batch_size")(at_least(1))

    @field_validator("grace_period")
    @classmethod
    def _grace(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError(f"must not be negative, got {value}")
        return value

    @field_validator("gc_claim_timeout")
    @classmethod
    def _claim_outlives_a_batch(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        deadline = info.data.get("gc_batch_deadline")
        if deadline is not None and value < 2 * deadline:
            raise ValueError(
                f"{value} is shorter than twice gc_batch_deadline ({deadline}): another gc "
                "could take over the claims of a batch that is still running"
            )
        return value


class TasksConfig(Strict):
    #: ``embedded``: a thread pool in the CLI / server process; ``celery``: per-site
    #: queues on a broker, consumed by ``safekeeper worker --site NAME``.
    executor: Literal["embedded", "celery"] = "embedded"
    broker_url: str = "redis://127.0.0.1:6379/0"
    threads: int = 4
    #: A running task whose heartbeat is older than this is re-claimed by another worker.
    heartbeat_timeout: timedelta = timedelta(minutes=5)
    #: A transfer whose thread moved no bytes for this long is stuck: its attempt is
    #: failed (logged at ERROR) so the task can run again. Longer than one part upload.
    stall_timeout: timedelta = timedelta(minutes=30)
    retry_base: timedelta = timedelta(seconds=2)
    retry_max: timedelta = timedelta(minutes=10)
    #: How often ``safekeeper worker`` runs a replication pass.
    replicate_interval: timedelta = timedelta(minutes=5)

    _durations = field_validator(
        "heartbeat_timeout",
        "stall_timeout",
        "retry_base",
        "retry_max",
        "replicate_interval",
        mode="before",
    )(duration)
    _positive = field_validator(
        "heartbeat_timeout", "stall_timeout", "retry_base", "retry_max", "replicate_interval"
    )(positive_duration)
    _one_or_more = field_validator("threads")(at_least(1))


class DatabaseConfig(Strict):
    #: SQLAlchemy URL; default: SQLite ``safekeeper.db`` in the data directory.
    url: str | None = None
    #: Where sign-in sessions live; default: ``sessions.db`` next to a SQLite catalog,
    #: or the catalog's own database when that is PostgreSQL.
    sessions_url: str | None = None


class PackagesConfig(Strict):
    """Budgets a zip package must fit before anything of it is stored."""

    max_members: int = 50_000
    max_extracted_size: int = 2 * 1024**3
    #: Uncompressed ÷ compressed size, per member and for the whole package.
    max_compression_ratio: float = 200.0

    _sizes = field_validator("max_extracted_size", mode="before")(size)


class Config(Strict):
    data_dir: Path
    source: Path | None = None
    #: Files and directories safekeeper creates (the catalog with its password hashes,
    #: the sessions database, stored blobs) are readable by their owner only (umask
    #: 077; the data directory 0700). False: the process's umask decides.
    private_files: bool = True
    database: DatabaseConfig = DatabaseConfig()
    policy: PolicyConfig = PolicyConfig()
    tasks: TasksConfig = TasksConfig()
    packages: PackagesConfig = PackagesConfig()
    server: ServerConfig = ServerConfig()
    sites: dict[str, SiteConfig] = {}
    locations: dict[str, LocationConfig]

    @model_validator(mode="after")
    def _references(self) -> Config:
        if not self.locations:
            raise ValueError("at least one location is required")
        for name, location in self.locations.items():
            if self.sites and location.site not in self.sites:
                raise ValueError(f"location {name!r} names unknown site {location.site!r}")
            for target in (*location.replicate_to, *location.delete_after_copies_at):
                if target == name:
                    raise ValueError(
                        f"location {name!r} names itself in replicate_to or "
                        "delete_after_copies_at: a copy cannot stand in for itself"
                    )
                if target not in self.locations:
                    raise ValueError(f"location {name!r} names unknown location {target!r}")
                if self.locations[target].kind == "cache":
                    raise ValueError(
                        f"location {name!r} names cache location {target!r}: a cache holds "
                        "extracted packages, not copies"
                    )
            if location.kind == "cache" and not location.store.startswith("file:"):
                raise ValueError(f"cache location {name!r} needs a local file: store")
        ingest = self.policy.ingest_location
        if ingest is not None and ingest not in self.locations:
            raise ValueError(f"policy.ingest_location names unknown location {ingest!r}")
        if ingest is not None and self.locations[ingest].kind == "cache":
            raise ValueError(f"policy.ingest_location names cache location {ingest!r}")
        if ingest is None and not any(loc.kind == "source" for loc in self.locations.values()):
            raise ValueError("no source location: add one or set policy.ingest_location")
        check_distinct_stores(self)
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'safekeeper.db'}"

    @property
    def sessions_database_url(self) -> str:
        if self.database.sessions_url:
            return self.database.sessions_url
        if self.database.url and not self.database.url.startswith("sqlite"):
            return self.database.url
        return f"sqlite:///{self.data_dir / 'sessions.db'}"

    @property
    def cache_location(self) -> str | None:
        """The location holding extracted packages: the first of kind ``cache``."""
        return next((n for n, loc in self.locations.items() if loc.kind == "cache"), None)

    @property
    def ingest_location(self) -> str:
        if self.policy.ingest_location:
            return self.policy.ingest_location
        return next(n for n, loc in self.locations.items() if loc.kind == "source")

    def store_url(self, location: str) -> str:
        """The location's store URL with ``file:relative`` resolved against the data dir."""
        return self.resolve_store_url(self.locations[location].store)

    def resolve_store_url(self, url: str) -> str:
        """``url`` with ``file:relative`` resolved against the data dir."""
        if url.startswith("file:") and not url.startswith(("file:/", "file://")):
            return (self.data_dir / url[len("file:") :]).resolve().as_uri()
        return url


def default_document() -> dict[str, Any]:
    """The configuration ``safekeeper init`` writes (and that applies with none at all)."""
    return {
        "policy": {"min_archive_copies": 1, "grace_period": "7d"},
        "sites": {"local": {"description": "this machine"}},
        "locations": {
            "inbox": {"kind": "source", "site": "local", "store": "file:inbox"},
            "archive": {"kind": "archive", "site": "local", "store": "file:archive"},
            "cache": {"kind": "cache", "site": "local", "store": "file:cache"},
            "scratch": {"kind": "processing", "site": "local", "store": "file:scratch"},
        },
    }


def make_files_private(data_dir: Path) -> None:
    """From now on this process creates files 0600 and directories 0700 (umask 077),
    and the data directory is made if missing (0700)."""
    os.umask(0o077)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_default(data_dir: Path) -> Path:
    """Create ``data_dir/safekeeper.toml``; refuse to overwrite an existing one."""
    make_files_private(data_dir)
    path = data_dir / CONFIG_NAME
    header = (
        "# safekeeper configuration. Every key, its default and an example per deployment\n"
        "# shape: docs/configuration.md in safekeeper's source tree.\n"
        "# Relative file: store paths are inside this directory.\n\n"
    )
    try:
        with path.open("x", encoding="utf-8") as out:
            out.write(header + tomli_w.dumps(default_document()))
    except FileExistsError as exc:
        raise BadInput(f"{path} already exists; not overwriting it") from exc
    return path


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    overrides: list[tuple[list[str], Any]] = []
    if environ.get("SAFEKEEPER_DATABASE_URL"):
        overrides.append((["database", "url"], environ["SAFEKEEPER_DATABASE_URL"]))
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        overrides.append((path, value))
    return overrides


def _apply(document: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node = document
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: cannot set {'.'.join(path)}: {part} is not a table")
        node = child
    node[path[-1]] = value


def _describe(exc: ValidationError, origin: str) -> ConfigError:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{origin}: {key}: {message}")
    return ConfigError("\n".join(lines))


def find_config(
    config_path: Path | None = None, data_dir: Path | None = None
) -> tuple[Path | None, Path]:
    """Return (config file or None, data dir) by the search order in the module doc."""
    env = os.environ
    if config_path is None and env.get("SAFEKEEPER_CONFIG"):
        config_path = Path(env["SAFEKEEPER_CONFIG"])
    if data_dir is None and env.get("SAFEKEEPER_DATA_DIR"):
        data_dir = Path(env["SAFEKEEPER_DATA_DIR"])
    if config_path is not None:
        if not config_path.is_file():
            raise ConfigError(f"{config_path}: no such configuration file")
        return config_path, data_dir or config_path.parent
    candidates = [(data_dir or DEFAULT_DATA_DIR) / CONFIG_NAME]
    if data_dir is None:
        candidates.append(Path(CONFIG_NAME))
    for candidate in candidates:
        if candidate.is_file():
            return candidate, data_dir or candidate.parent
    return None, data_dir or DEFAULT_DATA_DIR


def load_config(
    config_path: Path | None = None,
    data_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Find, read, override and validate the configuration; ConfigError says what is wrong."""
    path, resolved_dir = find_config(config_path, data_dir)
    origin = str(path) if path else "built-in default configuration"
    if path is None:
        document = default_document()
    else:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        if "data_dir" in document:
            resolved_dir = path.parent / str(document["data_dir"])
    for key_path, value in _env_overrides(os.environ if environ is None else environ):
        _apply(document, key_path, value, f"{origin} (environment override)")
    document["data_dir"] = resolved_dir.absolute()
    document["source"] = path.absolute() if path else None
    try:
        return Config.model_validate(document)
    except ValidationError as exc:
        raise _describe(exc, origin) from exc

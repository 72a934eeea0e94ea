from datetime import timedelta
from pathlib import Path

import pytest

from safekeeper.config import CONFIG_NAME, load_config, write_default
from safekeeper.errors import BadInput, ConfigError


def test_default_without_any_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.source is None
    assert config.data_dir == tmp_path / "safekeeper-data"
    assert {n: loc.kind for n, loc in config.locations.items()} == {
        "inbox": "source",
        "archive": "archive",
        "cache": "cache",
        "scratch": "processing",
    }
    assert config.ingest_location == "inbox"
    assert config.cache_location == "cache"
    assert config.store_url("inbox") == (tmp_path / "safekeeper-data" / "inbox").as_uri()
    assert config.database_url == f"sqlite:///{tmp_path / 'safekeeper-data' / 'safekeeper.db'}"
    assert config.sessions_database_url == (
        f"sqlite:///{tmp_path / 'safekeeper-data' / 'sessions.db'}"
    )


def test_sessions_share_a_postgresql_catalog(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u@127.0.0.1/db"
    config = load_config(data_dir=tmp_path, environ={"SAFEKEEPER_DATABASE_URL": url})
    assert config.sessions_database_url == url


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("SAFEKEEPER__LOCATIONS__INBOX__REPLICATE_TO", "names cache location 'cache'"),
        ("SAFEKEEPER__POLICY__INGEST_LOCATION", "names cache location 'cache'"),
    ],
)
def test_a_cache_location_holds_no_copies(tmp_path: Path, override: str, message: str) -> None:
    value = '["cache"]' if override.endswith("REPLICATE_TO") else "cache"
    with pytest.raises(ConfigError, match=message):
        load_config(data_dir=tmp_path, environ={override: value})


def test_package_budgets_take_sizes(tmp_path: Path) -> None:
    config = load_config(
        data_dir=tmp_path, environ={"SAFEKEEPER__PACKAGES__MAX_EXTRACTED_SIZE": "1GiB"}
    )
    assert config.packages.max_extracted_size == 1024**3
    with pytest.raises(ConfigError, match=r"packages\.max_extracted_size: bad size"):
        load_config(data_dir=tmp_path, environ={"SAFEKEEPER__PACKAGES__MAX_EXTRACTED_SIZE": "lots"})


def test_init_writes_the_default_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_default(tmp_path / "d")
    config = load_config(path, environ={})
    assert config.source == path
    assert config.policy.grace_period == timedelta(days=7)
    with pytest.raises(BadInput, match="already exists"):
        write_default(tmp_path / "d")


def test_found_in_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAFEKEEPER_CONFIG", raising=False)
    monkeypatch.delenv("SAFEKEEPER_DATA_DIR", raising=False)
    write_default(tmp_path / "safekeeper-data")
    assert load_config(environ={}).source == tmp_path / "safekeeper-data" / CONFIG_NAME


def test_environment_overrides(tmp_path: Path) -> None:
    path = write_default(tmp_path)
    config = load_config(
        path,
        environ={
            "SAFEKEEPER__POLICY__GRACE_PERIOD": "1h",
            "SAFEKEEPER__POLICY__MIN_ARCHIVE_COPIES": "2",
            "SAFEKEEPER__LOCATIONS__ARCHIVE__REPLICATE_TO": '["inbox"]',
            "SAFEKEEPER_DATABASE_URL": "sqlite:////tmp/x.db",
        },
    )
    assert config.policy.grace_period == timedelta(hours=1)
    assert config.policy.min_archive_copies == 2
    assert config.locations["archive"].replicate_to == ("inbox",)
    assert config.database_url == "sqlite:////tmp/x.db"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / CONFIG_NAME
    path.write_text(text)
    return path


BASE = """
[locations.inbox]
kind = "source"
store = "file:inbox"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[locations.inbox\n", "not valid TOML"),
        (BASE + "colour = 'blue'\n", "locations.inbox.colour: unknown key"),
        (BASE.replace('"source"', '"attic"'), "locations.inbox.kind: Input should be"),
        (BASE + "retention = 'soon'\n", "locations.inbox.retention: bad duration"),
        (BASE + "high_watermark = '10GB'\n", "set both high_watermark and low_watermark"),
        (BASE + "high_watermark = 0.9\nlow_watermark = 0.8\n", "fractional watermarks need"),
        (BASE + "replicate_to = ['nowhere']\n", "unknown location 'nowhere'"),
        (BASE.replace("file:inbox", "ftp://x"), "must start with file:"),
        ("[policy]\nmin_archive_copies = 'two'\n" + BASE, "policy.min_archive_copies"),
        ("[locations]\n", "at least one location"),
        ('[locations.a]\nkind = "archive"\nstore = "file:a"\n', "no source location"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ("policy", "min_archive_copies = -1", "policy.min_archive_copies: must be at least 0"),
        ("policy", "gc_batch_size = 0", "policy.gc_batch_size: must be at least 1"),
        ("policy", "gc_batch_size = -5", "policy.gc_batch_size: must be at least 1"),
        ("policy", "max_retries = 0", "policy.max_retries: must be at least 1"),
        ("policy", "grace_period = '-1d'", "policy.grace_period"),
        ("policy", "verify_max_age = '0s'", "policy.verify_max_age: must be longer than zero"),
        ("policy", "gc_batch_deadline = '0s'", "policy.gc_batch_deadline: must be longer"),
        ("policy", "gc_claim_timeout = '0s'", "policy.gc_claim_timeout: must be longer"),
        (
            "policy",
            "gc_claim_timeout = '3m'",
            "policy.gc_claim_timeout: 0:03:00 is shorter than twice gc_batch_deadline",
        ),
        (
            "policy",
            "gc_batch_deadline = '10m'",
            "policy.gc_claim_timeout: 0:10:00 is shorter than twice gc_batch_deadline",
        ),
        ("policy", "gc_rehash_max_size = 'huge'", "policy.gc_rehash_max_size: bad size"),
        ("tasks", "threads = 0", "tasks.threads: must be at least 1"),
        ("tasks", "threads = -2", "tasks.threads: must be at least 1"),
        ("tasks", "heartbeat_timeout = '0s'", "tasks.heartbeat_timeout: must be longer"),
        ("tasks", "retry_base = '0s'", "tasks.retry_base: must be longer"),
    ],
)
def test_unsafe_or_meaningless_values_are_refused(
    tmp_path: Path, section: str, key: str, message: str
) -> None:
    path = _write(tmp_path, f"[{section}]\n{key}\n" + BASE)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_location_cannot_stand_in_for_itself(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "delete_after_copies_at = ['inbox']\n")
    with pytest.raises(ConfigError, match="names itself"):
        load_config(path, environ={})


def test_safe_limits_are_accepted(tmp_path: Path) -> None:
    text = (
        "[policy]\nmin_archive_copies = 0\ngc_batch_size = 1\ngc_batch_deadline = '1m'\n"
        "gc_claim_timeout = '2m'\ngc_rehash_max_size = 0\ngrace_period = '0s'\n"
        "[tasks]\nthreads = 1\n" + BASE
    )
    config = load_config(_write(tmp_path, text), environ={})
    assert config.policy.min_archive_copies == 0
    assert config.policy.gc_claim_timeout == 2 * config.policy.gc_batch_deadline
    assert config.policy.verify_max_age == timedelta(days=30)  # the default bounds the risk


def test_bad_environment_override_is_named(tmp_path: Path) -> None:
    path = write_default(tmp_path)
    with pytest.raises(ConfigError, match=r"policy\.grace_period: bad duration"):
        load_config(path, environ={"SAFEKEEPER__POLICY__GRACE_PERIOD": "whenever"})


def test_missing_explicit_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.toml", environ={})


def test_watermarks_and_sizes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE + "capacity = '100GiB'\nhigh_watermark = 0.9\nlow_watermark = '50GiB'\n",
    )
    inbox = load_config(path, environ={}).locations["inbox"]
    assert inbox.capacity == 100 * 1024**3
    assert inbox.high_watermark == 0.9
    assert inbox.low_watermark == 50 * 1024**3

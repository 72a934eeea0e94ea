"""``replicate --wait`` does not wait forever for a site nobody serves (issue 15). First
``wait_for_tasks`` in process (fast), then with real processes: PostgreSQL, Redis and
``safekeeper worker`` subprocesses.

Two sites: the inbox (``file:``) at site-a, the archive at site-b; a transfer from a
local disk runs on the source's site, so every transfer waits for a site-a worker. Only
site-b's worker runs at first: ``--wait`` gives up with one ``error:`` line naming
site-a and its tasks (after ``--timeout``, or once site-a has had no live worker for
``--no-worker-timeout``), the tasks stay queued. Then a site-a worker runs while the
tasks are not due yet (in retry backoff): the wait outlasts ``--no-worker-timeout``,
because the site has a live worker, and ends with every transfer done.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w
from sqlalchemy import select, update

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Task
from safekeeper.engine.wait import WaitAbandoned, wait_for_tasks
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.operations.status import STALE_AFTER_SECONDS, report_alive
from tests.conftest import FakeClock
from tests.engine.processes import Workers

FILES = 3
#: How long the tasks stay in backoff while site-a's worker runs: longer than the
#: no-worker timeout below, so a wait that ignored the worker's reports would give up.
BACKOFF = 8.0
NO_WORKER = 2.0


def test_wait_names_the_unserved_site_and_its_tasks_and_ignores_other_sites_workers(
    archive: Archive, clock: FakeClock
) -> None:
    for i in range(12):
        archive.put_bytes(os.urandom(100 + i))
    task_ids = replication_pass(archive).task_ids
    assert len(task_ids) == 12
    report_alive(archive, "w-elsewhere", "celery-worker", ["elsewhere"])
    shown = ", ".join(map(str, task_ids[:10]))
    with pytest.raises(WaitAbandoned) as raised:
        wait_for_tasks(archive, task_ids, 0.01, no_worker_seconds=0.05)
    assert str(raised.value) == (
        f"no live worker for site local (none has reported); 12 tasks ({shown} and 2 more) "
        "wait there, still queued: start `safekeeper worker --site local`"
    )

    # A worker of the site that reported 31 s ago is not live; one that reports now is.
    report_alive(archive, "w-local", "celery-worker", ["local", "other"])
    clock.advance(seconds=STALE_AFTER_SECONDS + 1)
    with pytest.raises(WaitAbandoned, match=r"site local \(the last report was 31 s ago\)"):
        wait_for_tasks(archive, task_ids, 0.01, no_worker_seconds=0.05)
    report_alive(archive, "w-local", "celery-worker", ["local", "other"])
    with pytest.raises(WaitAbandoned) as raised:
        wait_for_tasks(archive, task_ids, 0.01, no_worker_seconds=0.05, timeout_seconds=0.3)
    assert str(raised.value).startswith(
        f"gave up after 0.3 s: 12 tasks ({shown} and 2 more) at site local not ended yet"
    )


def _safekeeper(
    config: Path, env: dict[str, str], *args: str, timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safekeeper", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"one error line expected:\n{result.stdout}{result.stderr}"
    return errors[0]


def _transfers(archive: Archive) -> list[tuple[int, str, str]]:
    with archive.db.read() as session:
        rows = session.execute(select(Task.id, Task.site, Task.state).order_by(Task.id)).all()
    return [(task_id, site, str(state)) for task_id, site, state in rows]


def _postpone(archive: Archive, task_ids: Sequence[int], seconds: float) -> None:
    """Put the tasks in retry backoff: queued after one attempt, due in ``seconds``."""
    with archive.db.write() as session:
        session.execute(
            update(Task)
            .where(Task.id.in_(task_ids))
            .values(attempts=1, not_before=archive.clock() + timedelta(seconds=seconds))
        )


@pytest.mark.slow
@pytest.mark.postgres
def test_replicate_wait_gives_up_on_a_site_without_a_live_worker(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    root = tmp_path / "deploy"
    root.mkdir()
    config = root / "safekeeper.toml"
    document = {
        "database": {"url": postgres_url},
        "tasks": {
            "executor": "celery",
            "broker_url": redis_url,
            "heartbeat_timeout": "4s",  # the re-send of retries comes every 2 s
            "replicate_interval": "1h",
        },
        "sites": {"site-a": {"description": "ingest"}, "site-b": {"description": "vault"}},
        "locations": {
            "inbox": {"kind": "source", "site": "site-a", "store": "file:inbox"},
            "archive": {"kind": "archive", "site": "site-b", "store": "file:archive"},
        },
    }
    config.write_text(tomli_w.dumps(document))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFEKEEPER", "AWS_"))}
    archive = Archive(load_config(config, environ={}))  # the schema, before the workers
    files = tmp_path / "files"
    files.mkdir()
    for i in range(FILES):
        (files / f"f{i}.bin").write_bytes(os.urandom(1000 + i))
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = Workers(config, logs, env)
    try:
        workers.start("site-b")
        workers.wait_ready("site-b")
        assert _safekeeper(config, env, "put", str(files)).returncode == 0
        sent = _safekeeper(config, env, "replicate")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        transfers = _transfers(archive)
        task_ids = [task_id for task_id, _site, _state in transfers]
        assert [(site, state) for _id, site, state in transfers] == [("site-a", "queued")] * FILES
        ids = ", ".join(map(str, task_ids))

        # An overall bound, whatever the workers do.
        timed_out = _safekeeper(
            config, env, "replicate", "--wait", "--timeout", "2s", "--no-worker-timeout", "1h"
        )
        assert timed_out.returncode == 1
        assert _error_line(timed_out) == (
            f"error: gave up after 2 s: {FILES} tasks ({ids}) at site site-a not ended yet "
            "(they go on without this command)"
        )

        # No worker for site-a: given up once it has had none for the no-worker timeout.
        # Site-b's live worker does not count for site-a.
        started = time.monotonic()
        unserved = _safekeeper(
            config, env, "replicate", "--wait", "--no-worker-timeout", f"{NO_WORKER:g}s"
        )
        elapsed = time.monotonic() - started
        assert unserved.returncode == 1
        assert _error_line(unserved) == (
            f"error: no live worker for site site-a (none has reported); {FILES} tasks "
            f"({ids}) wait there, still queued: start `safekeeper worker --site site-a`"
        )
        assert NO_WORKER <= elapsed < 30, elapsed
        assert [state for *_, state in _transfers(archive)] == ["queued"] * FILES

        # A live worker for site-a, tasks not due for longer than the no-worker timeout:
        # the wait goes on, and ends when the worker has run them.
        _postpone(archive, task_ids, 3600)
        workers.start("site-a")
        workers.wait_ready("site-a")
        _postpone(archive, task_ids, BACKOFF)
        started = time.monotonic()
        served = _safekeeper(
            config, env, "replicate", "--wait", "--no-worker-timeout", f"{NO_WORKER:g}s"
        )
        elapsed = time.monotonic() - started
        assert served.returncode == 0, served.stdout + served.stderr + workers.tails()
        assert f"tasks: {FILES} done" in served.stdout
        assert elapsed > BACKOFF - 2 > NO_WORKER, elapsed
        assert [state for *_, state in _transfers(archive)] == ["done"] * FILES
        workers.check_alive()
    finally:
        workers.stop_all()
        archive.close()

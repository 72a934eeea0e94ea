"""``safekeeper worker`` subprocesses for the tests of the distributed mode."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest


class Workers:
    """``safekeeper worker --site NAME`` subprocesses, logging into files."""

    def __init__(self, config: Path, logs: Path, env: dict[str, str]) -> None:
        self.config, self.logs, self.env = config, logs, env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []
        self._starts: dict[str, int] = {}

    def _starts_of(self, site: str) -> int:
        return self._starts.get(site, 0)

    def start(self, site: str) -> subprocess.Popen[bytes]:
        self._starts[site] = self._starts_of(site) + 1
        log = open(self.logs / f"worker-{site}-{self._starts[site]}.log", "wb")  # noqa: SIM115
        self._log_files.append(log)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "safekeeper",
                "--config",
                str(self.config),
                "worker",
                "--site",
                site,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[site] = process
        return process

    def wait_ready(self, site: str, timeout: float = 60.0) -> None:
        """Wait until the worker consumes (its start-up replication pass has run)."""
        log = self.logs / f"worker-{site}-{self._starts_of(site)}.log"
        deadline = time.monotonic() + timeout
        while " ready." not in log.read_text(errors="replace"):
            self.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"worker {site} did not become ready:\n{self.tails()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        for site, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"worker {site} exited with {process.returncode}:\n{self.tails()}")

    def tails(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.logs.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for log in self._log_files:
            log.close()

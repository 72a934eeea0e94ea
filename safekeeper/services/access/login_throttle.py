"""Failed sign-ins counted per account and per client address (``LoginThrottle``)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from safekeeper.errors import RateLimited

if TYPE_CHECKING:
    from safekeeper.config_server import ServerConfig


class LoginThrottle:
    """Failed sign-ins per account and per client address, in a sliding window.

    A client address that failed ``attempts`` times in the window is refused until the
    oldest failure leaves it. An account is never locked: past ``free_attempts``
    failures each next attempt waits ``backoff``, doubled per further failure, at most
    ``max_backoff`` after the last one. Guessing from many addresses slows to one try
    per ``max_backoff``, and the owner, whose address has not failed, waits at most
    that long (a hard lock let anyone lock anyone out for the whole window).

    In-process: each server process counts its own failures, so N processes allow up
    to N times ``attempts``. That bounds online guessing well enough for one server;
    a fleet behind a balancer would want the counts in a shared store.
    """

    #: Forget idle keys past this many, so a flood of names cannot grow memory unbounded.
    MAX_KEYS = 100_000

    def __init__(
        self,
        attempts: int,
        window: timedelta,
        *,
        free_attempts: int = 3,
        backoff: timedelta = timedelta(seconds=1),
        max_backoff: timedelta = timedelta(seconds=60),
    ) -> None:
        self.attempts = attempts
        self.window = window
        self.free_attempts = free_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._failures: dict[str, list[datetime]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, server: ServerConfig) -> LoginThrottle:
        return cls(
            server.login_attempts,
            server.login_window,
            free_attempts=server.login_free_attempts,
            backoff=server.login_backoff,
            max_backoff=server.login_max_backoff,
        )

    def account_delay(self, failures: int) -> timedelta:
        """How long after its last failure an account with ``failures`` recent failures
        waits before the next attempt (zero within the free attempts)."""
        if failures < self.free_attempts:
            return timedelta(0)
        doublings = min(failures - self.free_attempts, 30)
        return min(self.max_backoff, self.backoff * (1 << doublings))

    def _recent(self, key: str, now: datetime) -> list[datetime]:
        kept = [moment for moment in self._failures.get(key, ()) if now - moment < self.window]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def begin(self, keys: Sequence[str], now: datetime) -> None:
        """Count an attempt against every key (``keys[0]`` the account, the rest client
        addresses), or RateLimited if an address has used up its attempts or the
        account's backoff has not passed. Counted before the password is checked, in one
        locked step, so guesses sent in parallel cannot all pass the check while none
        has failed yet."""
        with self._lock:
            account = self._recent(keys[0], now)
            if account:
                ready = account[-1] + self.account_delay(len(account))
                if now < ready:
                    raise RateLimited(
                        "too many failed sign-ins for this account; try again shortly",
                        max(1, math.ceil((ready - now).total_seconds())),
                    )
            for key in keys[1:]:
                recent = self._recent(key, now)
                if len(recent) >= self.attempts:
                    wait = recent[0] + self.window - now
                    raise RateLimited(
                        "too many failed sign-ins; try again later",
                        max(1, math.ceil(wait.total_seconds())),
                    )
            if len(self._failures) > self.MAX_KEYS:
                for key in list(self._failures):
                    self._recent(key, now)
            for key in keys:
                self._failures.setdefault(key, []).append(now)

    def limits_reached(self, keys: Sequence[str], now: datetime) -> list[str]:
        """After a failure ``begin`` counted: which limits now hold back the next
        attempt (for the audit log: the account's backoff, an address's block)."""
        with self._lock:
            reached = []
            account = self._recent(keys[0], now)
            delay = self.account_delay(len(account))
            if delay:
                reached.append(f"account backs off {delay.total_seconds():g}s")
            for key in keys[1:]:
                if len(self._recent(key, now)) >= self.attempts:
                    reached.append(f"address {key.removeprefix('ip:')} blocked")
            return reached

    def succeed(self, keys: Sequence[str], now: datetime) -> None:
        """The attempt ``begin`` counted succeeded: the account (``keys[0]``) starts
        afresh and the attempt no longer counts against the other keys."""
        with self._lock:
            self._failures.pop(keys[0], None)
            for key in keys[1:]:
                moments = self._failures.get(key)
                if moments is not None and now in moments:
                    moments.remove(now)
                    if not moments:
                        del self._failures[key]

"""Concurrent lookups of one key run once; a failure reaches every waiter."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from safekeeper.api.single_flight import SingleFlight


def test_concurrent_callers_share_one_call_and_later_ones_call_again() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def lookup(value: int) -> int:
        with lock:
            calls.append(value)
        time.sleep(0.05)  # long enough for every caller to arrive while it runs
        return value * 2

    async def main() -> list[int]:
        flights = SingleFlight()
        first = await asyncio.gather(*(flights.run("k", lookup, 21) for _ in range(20)))
        other = await flights.run("other", lookup, 1)
        again = await flights.run("k", lookup, 5)
        return [*first, other, again]

    results = asyncio.run(main())
    assert results == [42] * 20 + [2, 10]
    assert calls == [21, 1, 5]


def test_a_failure_reaches_every_waiter_and_is_not_remembered() -> None:
    def failing() -> int:
        time.sleep(0.02)
        raise ValueError("database went away")

    async def main() -> tuple[list[BaseException | int], int]:
        flights = SingleFlight()
        outcomes = await asyncio.gather(
            *(flights.run("k", failing) for _ in range(5)), return_exceptions=True
        )
        return list(outcomes), await flights.run("k", lambda: 7)

    outcomes, afterwards = asyncio.run(main())
    assert all(isinstance(o, ValueError) for o in outcomes) and afterwards == 7


def test_a_caller_going_away_does_not_cancel_the_others() -> None:
    async def main() -> int:
        flights = SingleFlight()
        leaving = asyncio.ensure_future(flights.run("k", time.sleep, 0.05))
        staying = asyncio.ensure_future(flights.run("k", time.sleep, 0.05))
        await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await staying
        return 1

    assert asyncio.run(main()) == 1

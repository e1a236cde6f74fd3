"""Periodic timers on the common beat (``roomd.io.until_next``), under a virtual clock."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from roomd.io import until_next


def _near(a: float, b: float) -> bool:
    return abs(a - b) < 1e-6


async def test_timers_on_the_beat_wake_together_and_do_not_drift(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A timer of 1 s and one of 0.5 s wake at the same instants (every other one of the
    faster); one that ran late wakes on the beat again, instead of a period after."""
    wakes: dict[float, list[float]] = {1.0: [], 0.5: []}

    async def timer(period: float, count: int, late_after: int | None = None) -> None:
        for i in range(count):
            await trio.sleep(until_next(period))
            wakes[period].append(trio.current_time())
            if i == late_after:
                await trio.sleep(0.3)  # busy for a while

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer, 1.0, 6, 2)
            nursery.start_soon(timer, 0.5, 12)
    slow, fast = wakes[1.0], wakes[0.5]
    assert all(any(_near(t, u) for u in fast) for t in slow)  # together
    assert all(_near(b - a, 1.0) for a, b in itertools.pairwise(slow))  # no drift, none lost
    assert all(_near(b - a, 0.5) for a, b in itertools.pairwise(fast))


async def test_the_next_beat_is_within_one_period() -> None:
    for period in (0.01, 0.5, 1.0, 20.0):
        assert 0 < until_next(period) <= period

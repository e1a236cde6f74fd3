"""Periodic timers on the common beat (``roomd.io.until_next``) and the timer wheel a beat
takes what is due from (``roomd.io.TimerWheel``), under a virtual clock."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from roomd.io import TimerWheel, until_next


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


async def test_a_wheel_gives_an_item_at_the_first_beat_after_its_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        await trio.sleep(until_next(1.0))  # on a beat
    beat = trio.current_time()
    wheel: TimerWheel[str] = TimerWheel(1.0)
    wheel.at("soon", beat + 0.2)
    wheel.at("later", beat + 2.5)
    wheel.at("past", beat - 3.0)  # overdue: at the next take
    assert len(wheel) == 3 and "soon" in wheel
    assert wheel.due(beat) == ["past"]
    assert wheel.due(beat + 0.99) == []  # "soon" is due at the next beat, not before
    assert wheel.due(beat + 1.0) == ["soon"]
    assert "soon" not in wheel and len(wheel) == 1  # taken: no longer held
    assert wheel.due(beat + 2.0) == []
    assert wheel.due(beat + 3.0) == ["later"]
    assert len(wheel) == 0


async def test_a_wheel_moves_and_forgets_items_and_gives_the_earliest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        await trio.sleep(until_next(0.5))
    beat = trio.current_time()
    wheel: TimerWheel[int] = TimerWheel(0.5)
    for i in range(10):
        wheel.at(i, beat + 0.1 + 0.5 * (9 - i))  # 9 first, 0 last
    wheel.at(3, beat + 0.2)  # moved sooner: no longer at its old time
    wheel.discard(5)
    wheel.discard(5)  # (forgetting what is not held is nothing)
    wheel.discard(42)
    taken = wheel.due(beat + 60)  # a timer that woke late takes every slot passed, in order
    assert taken == [9, 3, 8, 7, 6, 4, 2, 1, 0]
    assert len(wheel) == 0 and wheel.due(beat + 120) == []

"""The event loop's lag: how late a node's timers fire (virtual time)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from roomd.node._lag import WINDOW, LoopLag

PERIOD = 0.1  # the sweep's


async def test_a_blocked_loop_is_measured_logged_and_forgotten_after_the_window(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    lag = LoopLag("n1")

    async def sweep() -> None:
        while True:
            await lag.sleep(PERIOD)

    with trio.fail_after(60):  # (virtual seconds)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sweep)
            await trio.sleep(1.0)
            assert lag.recent_max(trio.current_time()) == pytest.approx(0, abs=1e-6)
            with caplog.at_level(logging.WARNING, logger="roomd.node"):
                autojump_clock.jump(2.5)  # as if a task had run 2.5 s without a checkpoint
                await trio.sleep(PERIOD * 2)
            assert lag.stalls == 1
            # (the jump came some time into a sleep of PERIOD: the timer was up to that less late)
            assert 2.5 - PERIOD - 1e-9 <= lag.recent_max(trio.current_time()) <= 2.5 + 1e-9
            assert "n1: the event loop was blocked for 2." in caplog.text
            autojump_clock.jump(0.4)  # a short one: measured, not a stall
            await trio.sleep(PERIOD * 2)
            assert lag.stalls == 1
            await trio.sleep(WINDOW + PERIOD)
            assert lag.recent_max(trio.current_time()) == pytest.approx(0, abs=1e-6)
            nursery.cancel_scope.cancel()


def test_the_gauge_is_the_largest_lag_of_the_window() -> None:
    lag = LoopLag("n1", stall=10.0)
    for t, value in [(0.0, 0.2), (1.0, 0.5), (2.0, -0.01), (3.0, 0.1)]:
        lag.record(t, value)
    assert lag.recent_max(3.0) == 0.5
    assert lag.recent_max(1.0 + WINDOW + 0.5) == 0.1  # (the 0.5 fell out of the window)
    assert lag.stalls == 0

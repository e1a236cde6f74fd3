"""Periodic timers on a common beat: each wakes at the next multiple of its period on the wall
clock, not ``period`` after it last woke.

On this machine kind a process's wake-up costs about as much CPU as the little an idle timer
does when it runs (docs/performance.md, "Idle"). A node's periodic timers (the cluster's
heartbeat ticker, the bus probes, the connection sweep) that share a period, or periods that
divide each other, then fire in the same wake-up; and the nodes of a cluster, whose clocks
agree, send their heartbeats at the same moment, so that each node reads the others' in one
wake-up of its bus instead of one each. A timer that woke late does not drift: it wakes at the
next multiple again.

The wall clock is read once per Trio run (its offset from Trio's clock); Trio's clock does the
timing. Under a virtual clock (``trio.testing.MockClock``) the multiples are of virtual time.
"""

from __future__ import annotations

import time

import trio

_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("roomd_wall_clock_offset")


def until_next(period: float) -> float:
    """Seconds from now to the next multiple of ``period`` on the wall clock (in ``(0,
    period]``)."""
    try:
        offset = _OFFSET.get()
    except LookupError:
        offset = time.time() - trio.current_time()
        _OFFSET.set(offset)
    return period - (trio.current_time() + offset) % period

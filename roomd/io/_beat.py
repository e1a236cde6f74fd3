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

import math
import time
from typing import Generic, TypeVar

import trio

K = TypeVar("K")

_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("roomd_wall_clock_offset")


def until_next(period: float) -> float:
    """Seconds from now to the next multiple of ``period`` on the wall clock (in ``(0,
    period]``)."""
    return period - wall_clock(trio.current_time()) % period


def wall_clock(t: float) -> float:
    """Trio time ``t`` on the wall clock (the clock :func:`until_next` divides)."""
    try:
        offset = _OFFSET.get()
    except LookupError:
        offset = time.time() - trio.current_time()
        _OFFSET.set(offset)
    return t + offset


class TimerWheel(Generic[K]):
    """Items to look at again at a time, in slots of ``period`` seconds of the wall clock: a
    timer wheel for a timer that runs on the common beat of the same period.

    The timer takes what is due (:meth:`due`) each time it wakes, and gives each item it looked
    at its next time (:meth:`at`). An item is due from the first beat after its time, as when
    the timer looked at every item on every beat; but a beat costs what is due, not what is
    held (plus a step per slot held: the span of the times held over the period, a few dozen
    for the connection sweep). Adding, moving and removing an item cost a dict operation
    each.

    An item is in at most one slot; what :meth:`due` returns is no longer held.
    """

    __slots__ = ("_period", "_slots", "_where")

    def __init__(self, period: float) -> None:
        self._period = period
        self._slots: dict[int, dict[K, None]] = {}
        self._where: dict[K, int] = {}

    @property
    def period(self) -> float:
        return self._period

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def at(self, item: K, when: float) -> None:
        """Have ``item`` due at Trio time ``when`` (from the first beat after it), and no longer
        at the time it had."""
        slot = math.floor(wall_clock(when) / self._period) + 1
        old = self._where.get(item)
        if old == slot:
            return
        if old is not None:
            self._remove(item, old)
        self._where[item] = slot
        held = self._slots.get(slot)
        if held is None:
            self._slots[slot] = {item: None}
        else:
            held[item] = None

    def discard(self, item: K) -> None:
        """Forget ``item`` (if held)."""
        slot = self._where.pop(item, None)
        if slot is not None:
            self._remove(item, slot, forget=False)

    def due(self, now: float) -> list[K]:
        """Take every item due by Trio time ``now``, the earliest slot first."""
        # (a timer may wake a hair before its multiple, in floating point: that beat counts)
        last = math.floor(wall_clock(now) / self._period + 1e-6)
        ready = sorted(slot for slot in self._slots if slot <= last)
        taken: list[K] = []
        where = self._where
        for slot in ready:
            items = self._slots.pop(slot)
            for item in items:
                del where[item]
            taken += items
        return taken

    def _remove(self, item: K, slot: int, forget: bool = True) -> None:
        held = self._slots[slot]
        del held[item]
        if not held:
            del self._slots[slot]
        if forget:
            del self._where[item]

"""How late the node's event loop runs: a timer's lag.

Every task of a node shares one thread. A task that runs long without a checkpoint (a handler
that loops over a million items, a blocking call), or a process that gets no CPU (an overloaded
machine, a stopped VM), delays everything else by as much: the connections' reads and writes,
their pings, the cluster's heartbeats. The node cannot see that from inside any one task, but a
timer can: a task that sleeps measures how much later than asked it woke (what Node.js's
``monitorEventLoopDelay`` measures). The node's periodic sweep of its connections does (every
second at the defaults): a wake-up of its own would cost more than it tells (an idle wake-up
costs this kind of machine about 0.4 ms of CPU). What it reports is a lower bound: a block that
ends before the sweep's timer is due delays nothing it can see, and one that does shows from
the timer's due time on.

A lag of :data:`STALL` or more is logged (and counted): at the defaults every connection and
the bus waited that long, and at three times ``cluster.heartbeat_interval`` the other nodes take
this one for dead.
"""

from __future__ import annotations

import collections
import logging
from typing import Final

import trio

log = logging.getLogger("roomd.node")

WINDOW: Final = 10.0  # seconds the gauge's maximum covers
STALL: Final = 1.0  # seconds of lag that are logged and counted


class LoopLag:
    """The lag of the event loop: the largest of the last ``WINDOW`` seconds, and the stalls."""

    def __init__(self, name: str, *, stall: float = STALL) -> None:
        self.name = name
        self.stall = stall
        self.stalls = 0  # lags of at least ``stall`` seconds
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, and record how much later than that the loop woke this task."""
        start = trio.current_time()
        await trio.sleep(seconds)
        now = trio.current_time()
        self.record(now, now - start - seconds)

    def record(self, now: float, lag: float) -> None:
        lag = max(0.0, lag)
        recent = self._recent
        recent.append((now, lag))
        while now - recent[0][0] > WINDOW:
            recent.popleft()
        if lag >= self.stall:
            self.stalls += 1
            log.warning(
                "%s: the event loop was blocked for %.2f s: every connection and the bus waited "
                "(a task ran that long without a checkpoint, or the process got no CPU)",
                self.name,
                lag,
            )

    def recent_max(self, now: float) -> float:
        """The largest lag measured in the last ``WINDOW`` seconds."""
        return max((lag for when, lag in self._recent if now - when <= WINDOW), default=0.0)

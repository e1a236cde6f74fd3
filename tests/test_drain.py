"""The drain's schedule, in virtual time: clients are asked to move one after another over the
drain period, and the drain ends once the node is empty."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from roomd._config import ShutdownSection
from roomd.cluster import ClusterView
from roomd.node._drain import Drainer
from roomd.protocol import Reconnect


class Client:
    """A connection that moves as soon as it is asked to (as the client libraries do)."""

    def __init__(self, node: dict[Any, Any], idle: trio.Event) -> None:
        self.node, self.idle = node, idle
        self.session = self
        self.is_open = True
        self.closing = False
        self.asked: list[Any] = []

    def send(self, frame: Any) -> None:
        self.asked.append(frame)
        self.closing = True
        del self.node[self]
        if not self.node:
            self.idle.set()

    def close(self, code: int) -> None:
        self.closing = True


async def test_a_drain_ends_once_the_node_is_empty(autojump_clock: trio.testing.MockClock) -> None:
    """Not when the last client's move deadline passes (it moved long before): the node that
    drains stops as soon as it serves nobody."""
    view = ClusterView("a", 1)
    view.heartbeat("b", 2, 0, 0.0, {"status": "up", "url": "ws://b/ws", "connections": 0})
    settings = ShutdownSection(drain_period=1.0, move_timeout=5.0, drain_timeout=30.0)
    drainer = Drainer("a", view, settings)
    idle = trio.Event()
    connected: dict[Any, Any] = {}
    clients = [Client(connected, idle) for _ in range(4)]
    for client in clients:
        connected[client] = client  # (the connection and its transport)
    start = trio.current_time()
    await drainer.run(lambda: connected, idle.wait)
    assert all(isinstance(c.asked[0], Reconnect) for c in clients) and drainer.asked == 4
    assert trio.current_time() - start <= settings.drain_period  # not + the move timeout
    assert drainer.closed == 0

"""Draining a node: its clients move to the other nodes, one by one, and nothing is lost.

The node stops accepting connections and numbering streams (the others take them over, from its
copies). Over ``shutdown.drain_period`` it sends each connection a ``reconnect`` frame naming
the least loaded other node (with the rest as alternates); the client resumes its session there,
which hands the session over (its rooms, what it is owed) and replays what it missed. A client
that has not moved within ``shutdown.move_timeout`` is closed with 1001 (it reconnects and
resumes by itself). The node stops once it serves nobody, or at ``shutdown.drain_timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .._config import ShutdownSection
from ..cluster import ClusterView
from ..hub import Connection
from ..io import Transport
from ..protocol import CloseCode, Reconnect

log = logging.getLogger("roomd.node")


class Drainer:
    """Moves a node's clients to the other nodes."""

    def __init__(self, name: str, view: ClusterView, settings: ShutdownSection) -> None:
        self.name = name
        self.view = view
        self.settings = settings
        self.asked = 0  # clients sent a reconnect frame
        self.closed = 0  # clients closed with 1001 for not moving in time

    def targets(self) -> list[tuple[str, str, float]]:
        """The other nodes up (not draining) that clients can move to: (name, url, load)."""
        found = []
        for node in self.view.nodes.values():
            url = node.info.get("url")
            if node.name != self.name and node.status == "up" and isinstance(url, str):
                found.append((node.name, url, float(node.info.get("connections", 0))))
        return sorted(found, key=lambda t: (t[2], t[0]))

    async def run(
        self,
        connected: Callable[[], dict[Connection, Transport]],
        idle: Callable[[], Awaitable[None]],
    ) -> None:
        """Move every client (``connected()`` gives the node's connections now); returns once
        none is left (``idle()`` returns then) or at the drain timeout."""
        settings = self.settings
        with trio.move_on_after(settings.drain_timeout):
            async with trio.open_nursery() as nursery:
                conns = list(connected().items())
                pause = settings.drain_period / max(1, len(conns))
                loads = {name: load for name, _, load in self.targets()}
                log.info("%s draining: %d clients to move", self.name, len(conns))
                for conn, transport in conns:
                    if transport.closing:
                        continue
                    if not conn.session.is_open:
                        transport.close(CloseCode.GOING_AWAY)
                        continue
                    targets = [t for t in self.targets() if t[0] in loads] or self.targets()
                    if not targets:
                        log.warning("%s: no node to move %r to; closing it", self.name, conn)
                        transport.close(CloseCode.GOING_AWAY)
                        continue
                    name, url, _ = min(targets, key=lambda t: (loads.get(t[0], t[2]), t[0]))
                    loads[name] = loads.get(name, 0.0) + 1
                    alternates = [u for n, u, _ in targets if n != name] or None
                    conn.send(Reconnect(url, name, "draining", alternates))
                    self.asked += 1
                    nursery.start_soon(self._deadline, transport)
                    await trio.sleep(pause)
                await idle()
                nursery.cancel_scope.cancel()  # empty: the move deadlines have nothing to do
        for transport in list(connected().values()):
            transport.close(CloseCode.GOING_AWAY)

    async def _deadline(self, transport: Transport) -> None:
        await trio.sleep(self.settings.move_timeout)
        if not transport.closing:
            self.closed += 1
            transport.close(CloseCode.GOING_AWAY)

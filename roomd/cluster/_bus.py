"""The bus: a PUB and a SUB socket, to the broker or to every mesh peer.

Broker mode: PUB connects to the broker's XSUB (frontend), SUB to its XPUB (backend).
Mesh mode: PUB binds this node's endpoint; SUB connects to every peer's and to its own.

The bus is ready once a probe published on this node's own topic has come back through it:
then its subscriptions are live (the slow-joiner problem: messages published before a
subscription reaches the publisher are lost silently).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Final

import trio

from ..io import Flusher, SocketType, ZmqSocket, make_context, open_socket
from . import _wire

log = logging.getLogger("roomd.bus")

PROBE_INTERVAL: Final = 0.02  # seconds between readiness probes
PROBE_LOG_EVERY: Final = 250  # probes (5 s) between "still waiting" warnings
RECEIVE_BATCH: Final = 1024


class Bus:
    """Single-frame publish/subscribe between nodes.

    Resource handling: :meth:`run` owns the ZeroMQ context, both sockets and the receive task;
    it closes them when cancelled. :meth:`publish` never blocks: it queues the message, and the
    node's flusher sends everything queued in a round back to back (a lone ``send`` wakes
    libzmq's I/O thread each time and costs several times more). At the high-water mark libzmq
    drops messages (receivers detect lost presence deltas by their numbering).

    Error handling: ``on_batch`` is called with every batch received; it must not raise.
    """

    def __init__(
        self,
        name: str,
        *,
        flusher: Flusher,
        mode: str,
        on_batch: Callable[[list[bytes]], None],
        frontend: str = "",
        backend: str = "",
        bind: str | None = None,
        peers: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.mode = mode
        self.endpoint: str | None = None  # the bound endpoint, in mesh mode
        self.published = 0
        self.dropped = 0
        self.received = 0
        self._on_batch = on_batch
        self._flusher = flusher
        self._outgoing: list[bytes] = []
        self._frontend, self._backend = frontend, backend
        self._bind, self._peers = bind, peers
        self._pub: ZmqSocket | None = None
        self._sub: ZmqSocket | None = None
        self._probe = _wire.node_topic(name) + b"probe:" + secrets.token_bytes(8).hex().encode()
        self._ready = trio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Return once this node's subscriptions are live (its probe came back)."""
        await self._ready.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the sockets (started then), and probe until the subscriptions are live."""
        ctx = make_context()
        try:
            async with (
                open_socket(ctx, SocketType.PUB) as pub,
                open_socket(ctx, SocketType.SUB) as sub,
            ):
                self._connect(pub, sub)
                for topic in (_wire.CONTROL, _wire.ALL, _wire.node_topic(self.name)):
                    sub.subscribe(topic)
                self._pub, self._sub = pub, sub
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._receive, sub)
                        nursery.start_soon(self._until_ready, pub)
                        task_status.started()
                        await trio.sleep_forever()
                finally:
                    # Before the sockets close (closing checkpoints): other tasks unwinding
                    # meanwhile (a connection leaving its rooms) must find no socket, not a
                    # closed one.
                    self._pub = self._sub = None
        finally:
            ctx.destroy(linger=0)

    def _connect(self, pub: ZmqSocket, sub: ZmqSocket) -> None:
        if self.mode == "broker":
            pub.connect(self._frontend)
            sub.connect(self._backend)
            return
        if self._bind is None:
            raise ValueError("mesh mode needs this node's bus endpoint")
        self.endpoint = pub.bind(self._bind)
        for peer in (*self._peers, self.endpoint):
            sub.connect(peer)

    async def _until_ready(self, pub: ZmqSocket) -> None:
        for attempt in range(1, 10**9):
            pub.send_nowait(self._probe)
            with trio.move_on_after(PROBE_INTERVAL):
                await self._ready.wait()
            if self._ready.is_set():
                log.debug("bus ready after %d probes", attempt)
                return
            if attempt % PROBE_LOG_EVERY == 0:
                where = self._frontend if self.mode == "broker" else ", ".join(self._peers)
                log.warning("bus not ready yet (%s mode, %s)", self.mode, where)

    async def _receive(self, sub: ZmqSocket) -> None:
        probe = self._probe
        while True:
            batch = await sub.receive_batch(RECEIVE_BATCH)
            self.received += len(batch)
            if probe in batch:
                self._ready.set()
                batch = [m for m in batch if m != probe]
            if batch:
                self._on_batch(batch)

    def publish(self, message: bytes) -> None:
        """Queue one message for every subscriber of its topic (sent by :meth:`flush`)."""
        if not self._outgoing:
            self._flusher.mark(self)
        self._outgoing.append(message)

    def flush(self) -> None:
        """Send what was queued (called by the node's flusher)."""
        outgoing, self._outgoing = self._outgoing, []
        pub = self._pub
        if pub is None:
            self.dropped += len(outgoing)
            return
        sent = 0
        try:
            for message in outgoing:
                if pub.send_nowait(message):
                    self.published += 1
                else:
                    self.dropped += 1
                sent += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += len(outgoing) - sent

    def subscribe(self, topic: bytes) -> None:
        if self._sub is not None:
            self._sub.subscribe(topic)

    def unsubscribe(self, topic: bytes) -> None:
        if self._sub is not None:
            self._sub.unsubscribe(topic)

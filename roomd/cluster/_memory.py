"""An in-memory bus: the cluster layer without ZeroMQ, for tests that must be exact and fast.

A :class:`MemoryNetwork` connects any number of :class:`MemoryBus` instances with the semantics
the cluster relies on from PUB/SUB: a message reaches every bus subscribed to a prefix of it
(its publisher's included, as a broker echoes it), in the order published, in batches;
subscriptions are counted, as ZeroMQ counts them. Faults are switches: :meth:`MemoryNetwork.cut`
takes a bus off the network (what it publishes and what is published to it is lost, as in a
broker outage seen from that node), and a filter can drop chosen messages. With
``trio.testing.MockClock(autojump_threshold=0)`` a cluster's heartbeats, timeouts and windows
run in virtual time: a test of a 3 s failure detection takes milliseconds.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import _wire

BatchHandler = Callable[[list[bytes]], Awaitable[None]]
MessageFilter = Callable[[str, bytes], bool]  # (receiving bus, message) -> deliver it?


class MemoryNetwork:
    """The buses of one test cluster."""

    def __init__(self) -> None:
        self.buses: dict[str, MemoryBus] = {}
        self.cut_off: set[str] = set()
        self.held: dict[str, trio.Event] = {}
        self.filter: MessageFilter | None = None
        self.log: list[tuple[str, bytes]] = []  # (publisher, message), everything published

    def bus(self, name: str) -> Callable[[BatchHandler], MemoryBus]:
        """A factory for ``Cluster(..., bus=network.bus(name))``."""

        def make(on_batch: BatchHandler) -> MemoryBus:
            bus = MemoryBus(self, name, on_batch)
            self.buses[name] = bus
            return bus

        return make

    def cut(self, name: str) -> None:
        """Take ``name``'s bus off the network until :meth:`restore`."""
        self.cut_off.add(name)

    def restore(self, name: str) -> None:
        self.cut_off.discard(name)

    def hold(self, name: str) -> None:
        """Keep ``name``'s bus busy with the next batch it reads until :meth:`release`, as if
        handling it took that long (a node behind on reading: what comes meanwhile queues)."""
        self.held[name] = trio.Event()

    def release(self, name: str) -> None:
        self.held.pop(name).set()

    def kinds(self, publisher: str) -> list[str]:
        """The kinds of the messages ``publisher`` published, in order."""
        return [_wire.decode(m).kind for p, m in self.log if p == publisher]

    def _publish(self, publisher: str, message: bytes) -> bool:
        self.log.append((publisher, message))
        if publisher in self.cut_off:
            return False
        topic = message[: message.find(b"\x00") + 1]  # (every topic ends at its first NUL)
        for bus in list(self.buses.values()):
            if bus.name in self.cut_off or not bus.running:
                continue
            if self.filter is not None and not self.filter(bus.name, message):
                continue
            if topic in bus.topics:
                bus.inbox.append(message)
                bus.wake.set()
        return True


class MemoryBus:
    """One node's bus on a :class:`MemoryNetwork` (the cluster's ``BusPort``)."""

    mode = "memory"

    def __init__(self, network: MemoryNetwork, name: str, on_batch: BatchHandler) -> None:
        self.network = network
        self.name = name
        self.on_batch = on_batch
        self.topics: collections.Counter[bytes] = collections.Counter()
        self.inbox: list[bytes] = []
        self.wake = trio.Event()
        self.running = False
        self.published = self.received = self.dropped = 0
        self.waiting = True  # for messages: everything that came is handled
        self.handled_at = -math.inf  # when what had come was last all read

    @property
    def ready(self) -> bool:
        return self.running

    async def wait_ready(self) -> None:
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.topics.update((_wire.CONTROL, _wire.ALL, _wire.node_topic(self.name)))
        self.running = True
        task_status.started()
        try:
            while True:
                self.waiting = True
                await self.wake.wait()
                self.waiting = False
                read_at = trio.current_time()
                self.wake = trio.Event()
                batch, self.inbox = self.inbox, []
                self.received += len(batch)
                await self.on_batch(batch)
                held = self.network.held.get(self.name)
                if held is not None:
                    await held.wait()
                self.handled_at = read_at
        finally:
            self.running = False
            self.topics.clear()

    def heard_until(self, now: float) -> float:
        """As the ZeroMQ bus's (:meth:`roomd.cluster._bus.Bus.heard_until`)."""
        return now if self.waiting else self.handled_at

    def details(self) -> dict[str, Any]:
        return {}

    def paths_live(self) -> int:
        return 1 if self.running else 0

    def complete(self) -> bool:
        return self.running

    def publish(self, message: bytes) -> None:
        if self.running and self.network._publish(self.name, message):
            self.published += 1
        else:
            self.dropped += 1

    def subscribe(self, topic: bytes) -> None:
        self.topics[topic] += 1

    def unsubscribe(self, topic: bytes) -> None:
        self.topics[topic] -= 1
        if self.topics[topic] <= 0:
            del self.topics[topic]

"""The in-process cost of a node's hot paths, without sockets: ``roomd bench --workloads micro``.

One node in this process; connections are stand-ins whose outlet only counts the bytes queued.
Each case drives the node's frame dispatcher directly, as a connection's reader does, so what
is measured is decoding, checking, routing, encoding and queueing: the node's own work per
message, none of the kernel's.

* ``direct``: a chat message from one user to another (``send`` to a user, acknowledged);
* ``room``: a chat message to a room of 100 members on this node (acknowledged);
* ``decode``: decoding and checking the ``send`` frame alone;
* ``cluster direct``: the same direct message between two nodes of a three-node cluster in this
  process, on an in-memory bus (:class:`~roomd.cluster.MemoryNetwork`: no ZeroMQ, no broker),
  the addressee's inbox numbered by the third node: the Python work of all three per message
  (sender: decode, route, ask the sequencer; sequencer: number, keep, publish the entry,
  confirm; addressee's node: keep, deliver; sender: acknowledge), in CPU time. Sent in bursts
  of 100 (``burst``) and one at a time, each waiting for its acknowledgement (``one by one``:
  what every message costs when nothing batches it, scheduling included).

And what a node holds (``tracemalloc``, bytes allocated and still held):

* ``detached_session_bytes``: a session whose connection dropped, kept for the resume window
  (its connection object, session, room memberships: 1,000 sessions in one room each, divided);
* ``history_entry_bytes``: one message in a stream's log (the ``send`` above to a room, 1,000
  messages in a fresh room, divided), with ``history_message_bytes``, the size of its push body.

And the machine's own charges, which bound what any of this can cost at a moderate rate
(:mod:`._floor`): a ZeroMQ hop one at a time and in bursts, a loopback ``send()`` to a
sleeping and to a busy reader, a wake-up after a sleep and back to back (from epoll and from
Trio), and the same Python after each.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from .._config import config_from_dict
from ..cluster import MemoryNetwork, room_stream, user_stream
from ..hub import Connection, RateLimiter
from ..node import Node
from ..protocol import Session, decode_client_frame
from ._floor import measure_floor
from ._trio_costs import measure_trio


class _Outlet:
    """Counts what would be written."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0

    def send_frame(self, frame: bytes, volatile: bool = False) -> bool:
        self.frames += 1
        self.bytes += len(frame)
        return True

    def close(self, code: int, reason: str | None = None, *, discard: bool = False) -> None:
        raise AssertionError(f"closed with {code}: {reason}")

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        raise AssertionError("no event worker expected")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _node(name: str = "micro", network: MemoryNetwork | None = None) -> Node:
    settings: dict[str, Any] = {
        "node": {"name": name, "host": "127.0.0.1", "port": 0},
        "auth": {"dev": True},
        "limits": {"rate": 1e9, "burst": 10**9},
    }
    if network is None:
        return Node(config_from_dict(settings))
    settings["cluster"] = {"mode": "broker", "insecure": True}
    return Node(config_from_dict(settings), bus=network.bus(name))


def _connect(node: Node, user: str) -> Connection:
    conn = Connection(Session(user), _Outlet(), RateLimiter(1e9, 10**9, 0.0), 0.0)
    node._dispatch.on_message(conn, '{"type":"hello","v":1}', False)
    return conn


def _send_frame(to: dict[str, Any]) -> str:
    data = {"type": "text", "payload": {"content": "hello there"}}
    return orjson.dumps(
        {"type": "event", "id": 1, "event": "send", "data": {"to": to, "data": data}}
    ).decode()


def _per_call(fn: Callable[[], object], count: int) -> float:
    for _ in range(min(1000, count)):  # warm up
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


async def _measure(count: int) -> dict[str, float]:
    node = _node()
    alice, bob = _connect(node, "alice"), _connect(node, "bob")
    members = [_connect(node, f"user{i}") for i in range(100)]
    for conn in (alice, *members):
        node._dispatch.on_message(
            conn, '{"type":"event","event":"room.join","data":{"room":"r"}}', False
        )
    on_message = node._dispatch.on_message
    direct = _send_frame({"user": "bob"})
    room = _send_frame({"room": "r"})
    return {
        "direct_us": _per_call(lambda: on_message(alice, direct, False), count),
        "room100_us": _per_call(lambda: on_message(alice, room, False), count // 10),
        "decode_us": _per_call(lambda: decode_client_frame(direct, False), count),
        "delivered": float(bob.outlet.frames),  # type: ignore[attr-defined]
    }


class _Counter(_Outlet):
    """An outlet that wakes a waiter once it has counted ``target`` frames."""

    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__()
        self.nursery = nursery
        self.target = 0
        self.reached = trio.Event()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    def send_frame(self, frame: bytes, volatile: bool = False) -> bool:
        self.frames += 1
        if self.frames >= self.target:
            self.reached.set()
        return True

    async def wait_for(self, frames: int) -> None:
        if self.frames < frames:
            self.target, self.reached = frames, trio.Event()
            await self.reached.wait()


async def _measure_cluster(count: int) -> dict[str, float]:
    """CPU microseconds per direct message across a three-node cluster in this process."""
    network = MemoryNetwork()
    nodes = [_node(f"node{i}", network) for i in (1, 2, 3)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        with trio.fail_after(10):
            while any(len(node.view.nodes) < 3 for node in nodes):  # noqa: ASYNC110
                await trio.sleep(0.01)
        # The addressee on node2, its inbox numbered by node3: the three hops of the usual case.
        bob = next(
            f"bob{i}"
            for i in range(1000)
            if nodes[0].cluster.streams.sequencer_of(user_stream(f"bob{i}")) == "node3"
        )
        acks, pushes = _Counter(nursery), _Counter(nursery)
        alice = Connection(Session("alice"), acks, RateLimiter(1e9, 10**9, 0.0), 0.0)
        receiver = Connection(Session(bob), pushes, RateLimiter(1e9, 10**9, 0.0), 0.0)
        nodes[0]._dispatch.on_message(alice, '{"type":"hello","v":1}', False)
        nodes[1]._dispatch.on_message(receiver, '{"type":"hello","v":1}', False)
        with trio.fail_after(10):
            while not all(node.view.remote_hosts([bob]) for node in (nodes[0], nodes[2])):  # noqa: ASYNC110
                await trio.sleep(0.01)
        welcomed = pushes.frames
        frame = _send_frame({"user": bob})
        on_message = nodes[0]._dispatch.on_message

        async def burst(messages: int) -> None:
            for _ in range(messages // 100):
                for _ in range(100):
                    on_message(alice, frame, False)
                await acks.wait_for(acks.frames + 100)

        async def one_by_one(messages: int) -> None:
            for _ in range(messages):
                on_message(alice, frame, False)
                await acks.wait_for(acks.frames + 1)

        async def cpu_per(run: Callable[[int], Awaitable[None]], messages: int) -> float:
            await run(min(200, messages))  # warm up (the inbox's first message takes it over)
            best = float("inf")
            for _ in range(3):
                delivered = pushes.frames
                start = time.process_time()
                with trio.fail_after(60):
                    await run(messages)
                    await pushes.wait_for(delivered + messages)
                best = min(best, (time.process_time() - start) / messages)
            return best * 1e6

        result = {
            "cluster_direct_burst_us": await cpu_per(burst, max(100, count // 4 // 100 * 100)),
            "cluster_direct_one_us": await cpu_per(one_by_one, max(100, count // 20)),
        }
        result["cluster_delivered"] = float(pushes.frames - welcomed)
        for node in nodes:
            node.shutdown()
    return result


def _held_per(make: Callable[[int], object], count: int) -> float:
    """Bytes still allocated after ``make(i)`` for ``i`` in ``range(count)``, divided."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(i) for i in range(count)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del kept
    return held / count


async def _measure_memory() -> dict[str, float]:
    node = _node()
    sender = _connect(node, "sender")
    join = '{"type":"event","event":"room.join","data":{"room":"%s"}}'

    def detached(i: int) -> Connection:
        conn = _connect(node, f"d{i}")
        node._dispatch.on_message(conn, join % f"d{i % 10}", False)
        node.sessions.detach(conn)
        return conn

    node._dispatch.on_message(sender, join % "history", False)
    frame = _send_frame({"room": "history"})
    stream = room_stream("/", "history")

    def sent(i: int) -> None:
        node._dispatch.on_message(sender, frame, False)

    per_entry = _held_per(sent, 1000)
    bodies = [entry.body for entry in node.cluster.streams.store.log(stream)]
    return {
        "detached_session_bytes": _held_per(detached, 1000),
        "history_entry_bytes": per_entry,
        "history_messages": float(len(bodies)),
        "history_message_bytes": sum(map(len, bodies)) / max(1, len(bodies)),
    }


def run_micro(count: int = 20_000) -> dict[str, float]:
    """Microseconds per call of each case (the best of three rounds of ``count``), what
    this machine charges for a ZeroMQ hop and a loopback send (:mod:`._floor`), and what
    Trio's primitives cost (:mod:`._trio_costs`)."""
    return {
        **trio.run(_measure, count),
        **trio.run(_measure_cluster, count),
        **trio.run(_measure_memory),
        **measure_floor(count),
        **measure_trio(count),
    }

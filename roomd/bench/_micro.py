"""The in-process cost of a node's hot paths, without sockets: ``roomd bench --workloads micro``.

One node in this process; connections are stand-ins whose outlet only counts the bytes queued.
Each case drives the node's frame dispatcher directly, as a connection's reader does, so what
is measured is decoding, checking, routing, encoding and queueing: the node's own work per
message, none of the kernel's.

* ``direct``: a chat message from one user to another (``send`` to a user, acknowledged);
* ``room``: a chat message to a room of 100 members on this node (acknowledged);
* ``decode``: decoding and checking the ``send`` frame alone.

And what a node holds (``tracemalloc``, bytes allocated and still held):

* ``detached_session_bytes``: a session whose connection dropped, kept for the resume window
  (its connection object, session, room memberships: 1,000 sessions in one room each, divided);
* ``history_entry_bytes``: one message in a stream's log (the ``send`` above to a room, 1,000
  messages in a fresh room, divided), with ``history_message_bytes``, the size of its push body.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from .._config import config_from_dict
from ..cluster import room_stream
from ..hub import Connection, RateLimiter
from ..node import Node
from ..protocol import Session, decode_client_frame


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


def _node() -> Node:
    config = config_from_dict(
        {
            "node": {"name": "micro", "port": 0},
            "auth": {"dev": True},
            "limits": {"rate": 1e9, "burst": 10**9},
        }
    )
    return Node(config)


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
    """Microseconds per call of each case (the best of three rounds of ``count``)."""
    return {**trio.run(_measure, count), **trio.run(_measure_memory)}

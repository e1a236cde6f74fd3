"""The in-process cost of a node's hot paths, without sockets: ``roomd bench --workloads micro``.

One node in this process; connections are stand-ins whose outlet only counts the bytes queued.
Each case drives the node's frame dispatcher directly, as a connection's reader does, so what
is measured is decoding, checking, routing, encoding and queueing: the node's own work per
message, none of the kernel's.

* ``direct``: a chat message from one user to another (``send`` to a user, acknowledged);
* ``room``: a chat message to a room of 100 members on this node (acknowledged);
* ``decode``: decoding and checking the ``send`` frame alone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from .._config import config_from_dict
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


def run_micro(count: int = 20_000) -> dict[str, float]:
    """Microseconds per call of each case (the best of three rounds of ``count``)."""
    return trio.run(_measure, count)

"""The node's frame dispatcher, without sockets: frames in through ``on_message``, what the
node queues for the connection read back from a fake outlet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
import trio.testing

from roomd import Node
from roomd.hub import Connection, RateLimiter
from roomd.protocol import Session
from tests.support import make_config


class FakeOutlet:
    """Records frames (unwrapped from their WebSocket header) and the close; runs spawned
    tasks in a nursery the test owns."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.frames: list[dict[str, Any]] = []
        self.closed: int | None = None

    def send_frame(self, frame: bytes, volatile: bool = False) -> bool:
        length = frame[1] & 0x7F
        start = 2 if length < 126 else 4 if length == 126 else 10
        self.frames.append(orjson.loads(frame[start:]))
        return True

    def close(self, code: int, reason: str | None = None, *, discard: bool = False) -> None:
        self.closed = code

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def take(self) -> list[dict[str, Any]]:
        frames, self.frames = self.frames, []
        return frames


def attach(node: Node, nursery: trio.Nursery, user: str) -> tuple[Connection, FakeOutlet]:
    outlet = FakeOutlet(nursery)
    limits = node.config.limits
    conn = Connection(Session(user), outlet, RateLimiter(limits.rate, limits.burst, 0.0), 1e9)
    return conn, outlet


def send(node: Node, conn: Connection, frame: dict[str, Any]) -> None:
    node._dispatch.on_message(conn, orjson.dumps(frame).decode(), False)


async def test_hello_then_events_are_answered_in_order() -> None:
    node = Node(make_config())
    async with trio.open_nursery() as nursery:
        conn, outlet = attach(node, nursery, "alice")
        send(node, conn, {"type": "event", "id": 1, "event": "users.online"})
        error = outlet.take()
        assert error[0]["code"] == "handshake_required" and outlet.closed == 4003
        conn, outlet = attach(node, nursery, "alice")
        send(node, conn, {"type": "hello", "v": 1})
        (welcome,) = outlet.take()
        assert welcome["type"] == "welcome" and welcome["user"] == "alice"
        send(node, conn, {"type": "event", "id": 2, "event": "room.join", "data": {"room": "r"}})
        send(node, conn, {"type": "event", "id": 3, "event": "nope"})
        send(node, conn, {"type": "ping", "ts": 123})
        await trio.testing.wait_all_tasks_blocked()  # the event worker answers "nope"
        frames = outlet.take()
        join = next(f for f in frames if f.get("id") == 2)
        assert join["result"]["members"] == ["alice"] and join["result"]["offset"] == 0
        unknown = next(f for f in frames if f.get("id") == 3)
        assert unknown["error"]["code"] == "unknown_event"
        assert any(f["type"] == "pong" for f in frames)
        nursery.cancel_scope.cancel()


async def test_an_application_handler_runs_in_the_connections_worker_and_may_ask_back() -> None:
    node = Node(make_config())

    @node.on("confirm-first")
    async def confirm_first(ctx: Any, data: Any) -> Any:
        return {"answer": await ctx.request("confirm", data, timeout=5)}

    async with trio.open_nursery() as nursery:
        conn, outlet = attach(node, nursery, "alice")
        send(node, conn, {"type": "hello", "v": 1})
        send(node, conn, {"type": "event", "id": 7, "event": "confirm-first", "data": "ok?"})
        await trio.testing.wait_all_tasks_blocked()
        request = next(f for f in outlet.take() if f["type"] == "request")
        assert request["event"] == "confirm" and request["data"] == "ok?"
        send(node, conn, {"type": "ack", "id": request["id"], "result": "yes"})
        await trio.testing.wait_all_tasks_blocked()
        (ack,) = outlet.take()
        assert ack == {"type": "ack", "id": 7, "result": {"answer": "yes"}}
        nursery.cancel_scope.cancel()


async def test_a_repeated_client_message_id_gets_the_first_answer() -> None:
    node = Node(make_config())
    async with trio.open_nursery() as nursery:
        conn, outlet = attach(node, nursery, "alice")
        send(node, conn, {"type": "hello", "v": 1})
        send(node, conn, {"type": "event", "id": 1, "event": "room.join", "data": {"room": "r"}})
        message = {"type": "text", "payload": {"content": "once"}}
        event = {"type": "event", "event": "send", "cmid": "m-1"}
        event["data"] = {"to": {"room": "r"}, "data": message}
        outlet.take()
        send(node, conn, {**event, "id": 2})
        send(node, conn, {**event, "id": 3})
        frames = outlet.take()
        pushes = [f for f in frames if f["type"] == "push"]
        acks = {f["id"]: f["result"] for f in frames if f["type"] == "ack"}
        assert len(pushes) == 1 and acks[2] == acks[3]
        nursery.cancel_scope.cancel()


async def test_frames_over_the_rate_are_refused_with_their_id() -> None:
    node = Node(make_config(limits={"rate": 0.001, "burst": 2, "max_strikes": 1}))
    async with trio.open_nursery() as nursery:
        conn, outlet = attach(node, nursery, "alice")
        send(node, conn, {"type": "hello", "v": 1})
        send(node, conn, {"type": "event", "id": 1, "event": "users.online"})
        send(node, conn, {"type": "event", "id": 2, "event": "users.online"})
        frames = outlet.take()
        assert frames[-1] == {
            "type": "error",
            "code": "rate_limited",
            "message": "more than 0.001 frames/s (burst 2)",
            "ref": 2,
        }
        send(node, conn, {"type": "event", "id": 3, "event": "users.online"})
        assert outlet.closed == 4009
        nursery.cancel_scope.cancel()

"""Every frame a real node sends in a session that touches every feature validates against the
published JSON Schema."""

from __future__ import annotations

from typing import Any

import trio

from roomd import Context, HandlerError, Node
from tests.support import RawClient, connect
from tests.test_schema import validate_server_frame


class Recorder:
    """Wraps a RawClient's recv so that every frame it reads is kept."""

    def __init__(self, client: RawClient) -> None:
        self.frames: list[dict[str, Any]] = []
        original = client.recv

        async def recv() -> dict[str, Any]:
            frame = await original()
            if not any(frame is f for f in self.frames):
                self.frames.append(frame)
            return frame

        client.recv = recv  # type: ignore[method-assign]


async def test_real_output_validates(start_node: Any) -> None:
    node: Node = await start_node(permissions={"client_send": ["room", "user", "users", "all"]})

    @node.on("ask")
    async def ask(ctx: Context, data: Any) -> Any:
        return await ctx.request("confirm", data, timeout=2)

    @node.on("fail")
    async def fail(ctx: Context, data: Any) -> Any:
        raise HandlerError("nope", "no")

    frames: list[dict[str, Any]] = []
    with trio.fail_after(10):
        for binary in (False, True):
            async with (
                connect(node, "alice", binary=binary) as a,
                connect(node, "bob", hello=False) as b,
            ):
                rec_a, rec_b = Recorder(a), Recorder(b)
                await b.hello()
                await a.ok("room.join", {"room": "r"})
                await b.ok("room.join", {"room": "r"})
                await a.ok("room.members", {"room": "r"})
                text = {"type": "text", "payload": {"content": "hi"}}
                await b.ok("send", {"to": {"room": "r"}, "data": text})
                await b.ok("send", {"to": {"user": "alice"}, "event": "dm", "data": [1]})
                await b.ok("send", {"to": {"users": ["alice"]}, "event": "dm", "data": None})
                await b.ok("send", {"to": {"all": True}, "event": "news", "data": {"x": 1}})
                await b.ok("typing", {"room": "r"})
                await b.ok("status", {"status": "away", "text": "brb"})
                await a.ok("users.online")
                await a.ok("cluster.stats")
                await b.call("fail")
                await b.call("nope")
                await b.send({"type": "ping", "ts": 1.5})
                await b.expect("pong")
                await b.send({"type": "event", "id": 50, "event": "ask", "data": 7})
                req = await b.expect("request")
                await b.send({"type": "ack", "id": req["id"], "result": 8})
                await b.expect("ack", id=50)
                await b.ws.send_message("garbage")
                await b.expect("error")
                await b.send(
                    {
                        "type": "event",
                        "id": 60,
                        "event": "send",
                        "data": {"to": {"room": "r"}, "event": "poll", "ack": True, "timeout": 0.2},
                    }
                )
                await b.expect("ack", id=60)
                for event in ("room.joined", "message", "dm", "news", "typing", "status"):
                    await a.push(event)
                await b.ok("room.leave", {"room": "r"})
                await a.push("room.left")
                frames += rec_a.frames + rec_b.frames
    types = {f["type"] for f in frames}
    assert types == {"welcome", "ack", "push", "request", "pong", "error"}
    events = {f["event"] for f in frames if f["type"] == "push"}
    assert {"room.joined", "room.left", "message", "typing", "status", "dm", "news"} <= events
    for frame in frames:
        validate_server_frame(frame)

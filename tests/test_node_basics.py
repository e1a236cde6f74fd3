"""Connecting, the handshake, acks and errors, against a real node over 127.0.0.1."""

from __future__ import annotations

import trio

from roomd import Context, HandlerError, Node, RequestTimeout
from tests.support import connect


async def test_welcome_describes_session(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as c:
            w = c.welcome
            assert w["user"] == "alice" and w["node"] == "test" and w["v"] == 1
            assert w["session"] and w["resumeToken"] and w["seq"] == 0 and w["resumed"] is False
            assert w["limits"]["maxFrameBytes"] == 64 * 1024
            assert w["heartbeat"]["interval"] > 0


async def test_room_chat_round_trip(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "bob") as b:
            assert (await a.ok("room.join", {"room": "lobby"}))["members"] == ["alice"]
            joined = await b.ok("room.join", {"room": "lobby"})
            assert joined["members"] == ["alice", "bob"] and joined["offset"] == 0
            assert {"ns": "/", "room": "lobby"}.items() <= joined.items()
            push = await a.push("room.joined")
            assert push["data"] == {"ns": "/", "room": "lobby", "user": "bob"}
            msg = {"type": "text", "payload": {"content": "hi"}}
            result = await b.ok("send", {"to": {"room": "lobby"}, "data": msg})
            got = await a.push("message")
            assert got["data"]["messageId"] == result["messageId"]
            assert got["data"]["sender"] == "bob" and got["from"] == "bob"
            assert got["room"] == {"ns": "/", "room": "lobby"}
            assert got["seq"] == push["seq"] + 1
            # The room's stream: the join said where it stood (nothing numbered yet: no
            # epoch), the message is the next one.
            assert joined["epoch"] == "" and got["offset"] == 1 and got["epoch"]
            assert (result["epoch"], result["offset"]) == (got["epoch"], 1)


async def test_binary_connection_speaks_msgpack(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice", binary=True) as a, connect(node, "bob") as b:
            await a.ok("room.join", {"room": "r"})
            await b.ok("room.join", {"room": "r"})
            await b.ok(
                "send", {"to": {"room": "r"}, "data": {"type": "text", "payload": {"content": "x"}}}
            )
            got = await a.push("message")
            assert got["data"]["payload"] == {"content": "x"}


async def test_frame_before_hello_closes_4003(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice", hello=False) as c:
            await c.send({"type": "event", "event": "users.online", "id": 1})
            err = await c.expect("error")
            assert err["code"] == "handshake_required"
            assert (await c.closed())[0] == 4003


async def test_unsupported_version_closes_4002(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice", hello=False) as c:
            await c.send({"type": "hello", "v": 99})
            err = await c.expect("error")
            assert err["code"] == "unsupported_version" and "99" in err["message"]
            assert (await c.closed())[0] == 4002


async def test_bad_input_is_reported_and_connection_stays(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as c:
            await c.ws.send_message("{not json")
            assert (await c.expect("error"))["code"] == "bad_frame"
            await c.ws.send_message("[1, 2]")
            assert (await c.expect("error"))["code"] == "bad_frame"
            await c.send({"type": "bogus", "id": 7})
            err = await c.expect("error")
            assert err["code"] == "unknown_type" and err["ref"] == 7
            ack = await c.call("no.such.event", {})
            assert ack["error"]["code"] == "unknown_event"
            ack = await c.call("room.join", {"room": 5})
            assert ack["error"]["code"] == "invalid" and "room" in ack["error"]["message"]
            ack = await c.call("send", {"to": {"room": "x", "user": "y"}, "data": {}})
            assert ack["error"]["code"] == "invalid"
            bad = {"type": "text", "payload": {"content": "a" * 4097}}
            await c.ok("room.join", {"room": "r"})
            ack = await c.call("send", {"to": {"room": "r"}, "data": bad})
            assert ack["error"]["code"] == "invalid" and "4096" in ack["error"]["message"]
            # Still serving:
            assert (await c.ok("users.online", {}))["users"] == ["alice"]
            assert node.stats.errors["bad_frame"] == 2


async def test_ping_pong_carries_timestamps(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as c:
            await c.send({"type": "ping", "ts": 123.5})
            pong = await c.expect("pong")
            assert pong["ts"] == 123.5 and pong["serverTs"] > 1e9
            await c.send({"type": "ping", "ts": 123})
            raw = await c.ws.get_message()
            assert '"ts":123,' in raw  # echoed unchanged: an integer stays an integer


async def test_handler_reply_error_and_crash(node: Node) -> None:
    @node.on("echo")
    async def echo(ctx: Context, data: object) -> object:
        return {"user": ctx.user, "data": data}

    @node.on("fail")
    async def fail(ctx: Context, data: object) -> object:
        raise HandlerError("not_found", "no such thing")

    @node.on("crash")
    async def crash(ctx: Context, data: object) -> object:
        raise RuntimeError("boom")

    with trio.fail_after(5):
        async with connect(node, "alice") as c:
            assert await c.ok("echo", [1, 2]) == {"user": "alice", "data": [1, 2]}
            ack = await c.call("fail")
            assert ack["error"] == {"code": "not_found", "message": "no such thing"}
            ack = await c.call("crash")
            assert ack["error"]["code"] == "internal" and "boom" not in ack["error"]["message"]
            assert await c.ok("echo", 1) == {"user": "alice", "data": 1}


async def test_repeated_cmid_is_acknowledged_once(node: Node) -> None:
    calls = 0

    @node.on("count")
    async def count(ctx: Context, data: object) -> int:
        nonlocal calls
        calls += 1
        return calls

    with trio.fail_after(5):
        async with connect(node, "alice") as c:
            assert await c.ok("count", None, cmid="m-1") == 1
            assert await c.ok("count", None, cmid="m-1") == 1
            assert await c.ok("count", None, cmid="m-2") == 2
            assert calls == 2


async def test_server_request_with_ack_and_timeout(node: Node) -> None:
    answers: list[object] = []

    @node.on("ask-me")
    async def ask(ctx: Context, data: object) -> object:
        try:
            answers.append(await ctx.request("confirm", {"q": data}, timeout=float(data)))  # type: ignore[arg-type]
        except RequestTimeout as exc:
            answers.append(exc.code)
        return "done"

    with trio.fail_after(5):
        async with connect(node, "alice") as c:
            await c.send({"type": "event", "id": 1, "event": "ask-me", "data": 2})
            req = await c.expect("request")
            assert req["event"] == "confirm" and req["data"] == {"q": 2}
            await c.send({"type": "ack", "id": req["id"], "result": "yes"})
            assert (await c.expect("ack", id=1))["result"] == "done"
            await c.send({"type": "event", "id": 2, "event": "ask-me", "data": 0.2})
            await c.expect("request")  # never answered
            assert (await c.expect("ack", id=2))["result"] == "done"
            assert answers == ["yes", "timeout"]


async def test_undecodable_first_frame_closes_4003(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice", hello=False) as c:
            await c.ws.send_message("{nope")
            assert (await c.expect("error"))["code"] == "bad_frame"
            assert (await c.closed())[0] == 4003


async def test_before_hello_answers_in_each_frames_encoding(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice", hello=False, binary=True) as c:
            await c.send({"type": "ping", "ts": 2.0})
            assert (await c.expect("pong"))["ts"] == 2.0  # recv() asserts a binary frame
            await c.hello()
            assert c.welcome["user"] == "alice"

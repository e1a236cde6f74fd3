"""Every send mode, over several connections per user, from clients and from the node API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from roomd import Node
from tests.support import RawClient, connect


def text(content: str) -> dict[str, Any]:
    return {"type": "text", "payload": {"content": content}}


async def nothing_pending(*clients: RawClient) -> None:
    """Every client has received everything sent to it before (a round trip each)."""
    for c in clients:
        await c.ok("users.online", {})


async def test_send_to_room_reaches_members_only(node: Node) -> None:
    with trio.fail_after(5):
        async with (
            connect(node, "alice") as a,
            connect(node, "bob") as b,
            connect(node, "eve") as e,
        ):
            await a.ok("room.join", {"room": "r"})
            await b.ok("room.join", {"room": "r"})
            await a.ok("send", {"to": {"room": "r"}, "data": text("one")})
            assert (await b.push("message"))["data"]["payload"]["content"] == "one"
            assert (await a.push("message"))["data"]["payload"]["content"] == "one"
            await a.ok("send", {"to": {"room": "r"}, "data": text("two"), "exceptSelf": True})
            assert (await b.push("message"))["data"]["payload"]["content"] == "two"
            await nothing_pending(a, e)
            assert not [f for f in a.backlog if f.get("event") == "message"]
            assert not [f for f in e.backlog if f.get("event") == "message"]
            ack = await e.call("send", {"to": {"room": "r"}, "data": text("x")})
            assert ack["error"]["code"] == "not_in_room"


async def test_send_to_user_reaches_all_their_connections_and_senders_others(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a1, connect(node, "alice") as a2:
            async with connect(node, "bob") as b1, connect(node, "bob") as b2:
                result = await a1.ok("send", {"to": {"user": "bob"}, "data": text("dm")})
                for c in (b1, b2, a2):
                    push = await c.push("message")
                    assert push["to"] == ["bob"] and push["from"] == "alice"
                    assert push["data"]["messageId"] == result["messageId"]
                await nothing_pending(a1)
                assert not [f for f in a1.backlog if f.get("event") == "message"]


async def test_send_to_users_and_to_everyone(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(permissions={"client_send": ["users", "all"]})
    with trio.fail_after(5):
        async with (
            connect(node, "alice") as a,
            connect(node, "bob") as b,
            connect(node, "carol") as c,
        ):
            await a.ok("send", {"to": {"users": ["bob", "carol", "bob"]}, "data": text("hi")})
            for x in (b, c):
                assert (await x.push("message"))["to"] == ["bob", "carol"]
            await a.ok("send", {"to": {"all": True}, "event": "news", "data": {"n": 1}})
            for x in (a, b, c):
                assert (await x.push("news"))["data"] == {"n": 1}
            ack = await a.call("send", {"to": {"room": "r"}, "data": text("x")})
            assert ack["error"]["code"] == "forbidden"


async def test_sending_to_everyone_is_off_by_default(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a:
            ack = await a.call("send", {"to": {"all": True}, "data": text("x")})
            assert ack["error"]["code"] == "forbidden"


async def test_node_fills_in_and_guards_message_fields(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a:
            await a.ok("room.join", {"room": "r"})
            mid = "6f1c2a9e-8d4b-4f5e-9a7c-1b2d3e4f5a6b"
            msg = {**text("x"), "messageId": mid, "timestamp": 5, "metadata": {"k": [1]}}
            assert (await a.ok("send", {"to": {"room": "r"}, "data": msg}))["messageId"] == mid
            got = (await a.push("message"))["data"]
            assert (
                got["messageId"] == mid and got["timestamp"] == 5 and got["metadata"] == {"k": [1]}
            )
            spoof = {**text("x"), "sender": "bob"}
            ack = await a.call("send", {"to": {"room": "r"}, "data": spoof})
            assert ack["error"]["code"] == "invalid"
            image = {
                "type": "image",
                "payload": {"url": "javascript:alert(1)", "width": 1, "height": 1},
            }
            ack = await a.call("send", {"to": {"room": "r"}, "data": image})
            assert ack["error"]["code"] == "invalid"
            image["payload"]["url"] = "https://example.invalid/cat.png"  # type: ignore[index]
            await a.ok("send", {"to": {"room": "r"}, "data": image})
            assert (await a.push("message"))["data"]["type"] == "image"


async def test_sequence_numbers_are_per_session(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "bob") as b:
            await a.ok("room.join", {"room": "r"})
            await b.ok("room.join", {"room": "r"})  # alice gets room.joined: seq 1
            for i in range(5):
                await b.ok("send", {"to": {"room": "r"}, "data": text(str(i))})
            seqs_a = [(await a.push("message"))["seq"] for _ in range(5)]
            seqs_b = [(await b.push("message"))["seq"] for _ in range(5)]
            assert seqs_a == [2, 3, 4, 5, 6] and seqs_b == [1, 2, 3, 4, 5]


async def test_node_api_sends(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "bob") as b:
            await a.ok("room.join", {"room": "r", "ns": "n"})
            message_id = node.send_to_room("r", "alert", {"x": 1}, ns="n")
            push = await a.push("alert")
            assert push["data"] == {"x": 1} and "from" not in push
            assert push["room"] == {"ns": "n", "room": "r"} and push["offset"] == 1
            assert isinstance(message_id, str)
            node.send_to_user("bob", "dm", 2)
            dm = await b.push("dm")
            assert dm["to"] == ["bob"] and dm["offset"] == 1  # bob's inbox stream
            node.send_to_users(["alice", "bob"], "both", 3)
            assert node.broadcast("all", 4) == 2
            for c in (a, b):
                await c.push("both")
                await c.push("all")
            assert node.kick("bob") == 1
            assert await b.closed() == (4010, "kicked")


async def test_room_send_with_ack_counts_member_acknowledgements(node: Node) -> None:
    with trio.fail_after(5):
        async with (
            connect(node, "alice") as a,
            connect(node, "bob") as b,
            connect(node, "carol") as c,
            connect(node, "dave") as d,
        ):
            for x in (a, b, c, d):
                await x.ok("room.join", {"room": "r"})
            send = {"to": {"room": "r"}, "event": "poll", "data": {"q": 1}, "ack": True}
            await a.send(
                {
                    "type": "event",
                    "id": 99,
                    "event": "send",
                    "data": {**send, "timeout": 0.5, "exceptSelf": True},
                }
            )
            for x, answer in (
                (b, {"result": "yes"}),
                (c, {"error": {"code": "no", "message": "x"}}),
            ):
                req = await x.expect("request")
                assert req["event"] == "poll" and req["from"] == "alice"
                assert req["room"] == {"ns": "/", "room": "r"} and req["data"] == {"q": 1}
                await x.send({"type": "ack", "id": req["id"], **answer})
            await d.expect("request")  # dave never answers
            ack = await a.expect("ack", id=99)
            counts = {k: v for k, v in ack["result"].items() if k != "messageId"}
            assert counts == {"acked": 1, "errors": 1, "missing": 1, "nodesMissing": []}
            bad = await a.call(
                "send", {"to": {"user": "bob"}, "data": 1, "event": "x", "ack": True}
            )
            assert bad["error"]["code"] == "invalid"

"""Connecting, the handshake, acks and errors, against a real node over 127.0.0.1."""

from __future__ import annotations

import trio

from roomd import Node
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
            assert joined == {"ns": "/", "room": "lobby", "members": ["alice", "bob"]}
            push = await a.push("room.joined")
            assert push["data"] == {"ns": "/", "room": "lobby", "user": "bob"}
            msg = {"type": "text", "payload": {"content": "hi"}}
            result = await b.ok("send", {"to": {"room": "lobby"}, "data": msg})
            got = await a.push("message")
            assert got["data"]["messageId"] == result["messageId"]
            assert got["data"]["sender"] == "bob" and got["from"] == "bob"
            assert got["room"] == {"ns": "/", "room": "lobby"}
            assert got["seq"] == push["seq"] + 1

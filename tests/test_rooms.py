"""Rooms: join, leave, members, presence pushes, limits, typing and status."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
import trio

from roomd import Node
from tests.support import connect


async def test_join_leave_members_and_presence(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "bob") as b:
            await a.ok("room.join", {"room": "r", "ns": "chat"})
            await b.ok("room.join", {"room": "r", "ns": "chat"})
            assert (await a.push("room.joined"))["data"]["user"] == "bob"
            members = await a.ok("room.members", {"room": "r", "ns": "chat"})
            assert [m["user"] for m in members["members"]] == ["alice", "bob"]
            # Same room name in another namespace is another room.
            assert (await a.ok("room.join", {"room": "r"}))["members"] == ["alice"]
            await b.ok("room.leave", {"room": "r", "ns": "chat"})
            left = await a.push("room.left")
            assert left["data"] == {"ns": "chat", "room": "r", "user": "bob"}
            ack = await b.call("room.members", {"room": "r", "ns": "chat"})
            assert ack["error"]["code"] == "not_in_room"
            ack = await b.call("room.leave", {"room": "r", "ns": "chat"})
            assert ack["error"]["code"] == "not_in_room"
    assert node.hub.rooms == {}


async def test_presence_counts_users_not_connections(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a:
            await a.ok("room.join", {"room": "r"})
            async with connect(node, "bob") as b1:
                await b1.ok("room.join", {"room": "r"})
                assert (await a.push("room.joined"))["data"]["user"] == "bob"
                async with connect(node, "bob") as b2:
                    await b2.ok("room.join", {"room": "r"})  # no second room.joined
                    members = await a.ok("room.members", {"room": "r"})
                    assert members["members"][1] == {
                        "user": "bob",
                        "status": "online",
                        "connections": 2,
                    }
                # b2 disconnected: bob is still in the room through b1.
                await a.ok("users.online", {})
                assert node.room_members("r") == ["alice", "bob"]
            # The disconnect of bob's last connection announces the leave.
            left = await a.push("room.left")
            assert left["data"]["user"] == "bob"
            assert all(f["event"] != "room.joined" for f in a.backlog if f["type"] == "push")


async def test_joins_and_leaves_are_announced_only_in_rooms_up_to_the_limit(
    start_node: Callable[..., Any],
) -> None:
    """Above ``limits.announce_members_up_to`` users (counted after the change), a room's
    members get no ``room.joined`` / ``room.left``; ``room.members`` still lists everyone."""
    node: Node = await start_node(limits={"announce_members_up_to": 2})
    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "bob") as b:
            await a.ok("room.join", {"room": "r"})
            await b.ok("room.join", {"room": "r"})
            assert (await a.push("room.joined"))["data"]["user"] == "bob"  # two users
            async with connect(node, "carol") as c:
                await c.ok("room.join", {"room": "r"})  # three: not announced
                members = await a.ok("room.members", {"room": "r"})
                assert [m["user"] for m in members["members"]] == ["alice", "bob", "carol"]
                await c.ok("room.leave", {"room": "r"})  # two again: announced
                assert (await a.push("room.left"))["data"]["user"] == "carol"
            pushes = [f["event"] for f in a.backlog if f["type"] == "push"]
            assert "room.joined" not in pushes, pushes  # (carol's join, had it been pushed)
            await b.ok("room.leave", {"room": "r"})
            assert (await a.push("room.left"))["data"]["user"] == "bob"


async def test_room_limits(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_rooms_per_connection": 2, "max_members_per_room": 1})
    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "bob") as b:
            await a.ok("room.join", {"room": "one"})
            await a.ok("room.join", {"room": "two"})
            await a.ok("room.join", {"room": "two"})  # joining again is a no-op
            ack = await a.call("room.join", {"room": "three"})
            assert ack["error"]["code"] == "too_many_rooms"
            ack = await b.call("room.join", {"room": "one"})
            assert ack["error"]["code"] == "room_full"
            ack = await b.call("room.join", {"room": ""})
            assert ack["error"]["code"] == "invalid"


async def test_typing_is_volatile_and_skips_the_typist(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a1, connect(node, "alice") as a2:
            async with connect(node, "bob") as b:
                for c in (a1, a2, b):
                    await c.ok("room.join", {"room": "r"})
                await a1.ok("typing", {"room": "r", "typing": True})
                push = await b.push("typing")
                assert "seq" not in push
                assert push["data"] == {"ns": "/", "room": "r", "user": "alice", "typing": True}
                await b.ok("typing", {"room": "r", "typing": False})
                assert (await a2.push("typing"))["data"]["user"] == "bob"
                assert (await a1.push("typing"))["data"]["user"] == "bob"


async def test_status_reaches_room_members_and_own_connections(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a1, connect(node, "alice") as a2:
            async with connect(node, "bob") as b, connect(node, "carol") as c:
                await a1.ok("room.join", {"room": "r"})
                await b.ok("room.join", {"room": "r"})
                await a1.ok("status", {"status": "away", "text": "lunch"})
                expected = {"user": "alice", "status": "away", "text": "lunch"}
                assert (await b.push("status"))["data"] == expected
                assert (await a2.push("status"))["data"] == expected
                members = await b.ok("room.members", {"room": "r"})
                assert members["members"][0]["status"] == "away"
                await c.ok("users.online", {})
                assert not [f for f in c.backlog if f.get("event") == "status"]
                empty = await a1.call("status", {"status": ""})
                assert empty["error"]["code"] == "invalid"
                assert empty["error"]["message"] == "status: must not be empty"


@pytest.mark.parametrize(
    "room",
    [
        "\u202egnp.exe",  # right-to-left override
        "lob\u2066by\u2069",  # isolates
        "lob\u200bby",  # zero-width space
        "\ufefflobby",  # byte order mark
        "lobby\u00ad",  # soft hyphen
        "\u3164",  # Hangul filler: a letter that renders as nothing
        "a\u2028b",  # line separator
        "\ue000",  # private use
    ],
)
async def test_names_that_hide_what_they_are_are_refused(node: Node, room: str) -> None:
    with trio.fail_after(5):
        async with connect(node, "alice") as a:
            ack = await a.call("room.join", {"room": room})
            assert ack["error"]["code"] == "invalid"
            assert "invisible" in ack["error"]["message"]
            ack = await a.call("room.join", {"room": "r", "ns": room})
            assert ack["error"]["code"] == "invalid"
    assert node.hub.rooms == {}


async def test_names_are_normalised_nfc(node: Node) -> None:
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    with trio.fail_after(5):
        a_name, b_name = urllib.parse.quote(decomposed), urllib.parse.quote(composed)
        async with connect(node, a_name) as a, connect(node, b_name) as b:
            assert a.welcome["user"] == b.welcome["user"] == composed
            assert (await a.ok("room.join", {"room": decomposed}))["room"] == composed
            assert (await b.ok("room.join", {"room": composed}))["members"] == [composed]
            assert node.room_members(composed) == [composed]

"""Sessions that survive their connection: detach, resume with replay, tokens, the window."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from roomd import Node
from tests.support import RawClient, connect, wait_until

MESSAGE = {"type": "text", "payload": {"content": "hi"}}


def text(content: str) -> dict[str, Any]:
    return {"type": "text", "payload": {"content": content}}


async def drop(client: RawClient) -> None:
    """Lose the connection without a close frame (the network went away)."""
    await client.ws._stream.aclose()


class Positions:
    """What a client library tracks to resume: its rooms' and inbox's last positions."""

    def __init__(self, welcome: dict[str, Any]) -> None:
        self.session = welcome["session"]
        self.token = welcome["resumeToken"]
        self.seq = welcome["seq"]
        self.inbox = welcome.get("inbox")
        self.rooms: dict[tuple[str, str], dict[str, Any]] = {}

    def joined(self, ack: dict[str, Any]) -> None:
        self.rooms[(ack["ns"], ack["room"])] = {"epoch": ack["epoch"], "offset": ack["offset"]}

    def saw(self, push: dict[str, Any]) -> None:
        if "seq" in push:
            self.seq = push["seq"]
        if "offset" in push:
            position = {"epoch": push["epoch"], "offset": push["offset"]}
            if "room" in push:
                self.rooms[(push["room"]["ns"], push["room"]["room"])] = position
            else:
                self.inbox = position

    def resume(self, token: str | None = None) -> dict[str, Any]:
        rooms = [{"ns": ns, "room": room, **at} for (ns, room), at in self.rooms.items()]
        return {
            "session": self.session,
            "token": token or self.token,
            "seq": self.seq,
            "rooms": rooms,
            "inbox": self.inbox,
        }


@asynccontextmanager
async def resumed(
    node: Node, user: str, request: dict[str, Any]
) -> AsyncIterator[tuple[RawClient, dict[str, Any]]]:
    """A new connection whose hello resumes ``request``: the client and its welcome."""
    async with connect(node, user, hello=False) as client:
        await client.send({"type": "hello", "v": 1, "resume": request})
        yield client, await client.expect("welcome")


async def test_a_dropped_session_resumes_with_every_message_it_missed_in_order(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node()
    with trio.fail_after(10):
        async with connect(node, "bob") as bob:
            await bob.ok("room.join", {"room": "r"})
            async with connect(node, "alice") as alice:
                at = Positions(alice.welcome)
                at.joined(await alice.ok("room.join", {"room": "r"}))
                await bob.push("room.joined")
                await bob.ok("send", {"to": {"room": "r"}, "data": text("before")})
                at.saw(await alice.push("message"))
                await drop(alice)
                await wait_until(lambda: node.sessions.detached_count == 1)
            for i in range(5):
                await bob.ok("send", {"to": {"room": "r"}, "data": text(f"missed {i}")})
            await bob.ok("send", {"to": {"user": "alice"}, "data": text("dm")})
            async with resumed(node, "alice", at.resume()) as (again, welcome):
                assert welcome["resumed"] is True and welcome["session"] == at.session
                assert welcome["replayed"] == 6 and welcome["seq"] == at.seq
                missed = [await again.push("message") for _ in range(6)]
                contents = [p["data"]["payload"]["content"] for p in missed]
                assert contents == [f"missed {i}" for i in range(5)] + ["dm"]
                assert [p["seq"] for p in missed] == list(range(at.seq + 1, at.seq + 7))
                assert [p["offset"] for p in missed[:5]] == [2, 3, 4, 5, 6]
                await bob.ok("send", {"to": {"room": "r"}, "data": text("live")})
                live = await again.push("message")
                assert live["data"]["payload"]["content"] == "live" and live["offset"] == 7
                # Nobody saw alice leave: her session only waited.
                assert await bob.ok("users.online", {}) == {"users": ["alice", "bob"]}
                assert not [f for f in bob.backlog if f.get("event") == "room.left"]
    assert node.stats.resumes["resumed"] == 1


async def test_a_resume_closes_the_old_connection_still_open_with_4012(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node()
    with trio.fail_after(10):
        async with connect(node, "alice") as old:
            at = Positions(old.welcome)
            at.joined(await old.ok("room.join", {"room": "r"}))
            async with resumed(node, "alice", at.resume()) as (new, welcome):
                assert welcome["resumed"] is True
                assert (await old.closed())[0] == 4012
                assert await new.ok("room.members", {"room": "r"})  # still in the room
                assert node.hub.users["alice"] == [node.hub.connections[at.session]]


async def test_a_session_not_resumed_within_the_window_ends(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(sessions={"resume_window": 0.2})
    with trio.fail_after(10):
        async with connect(node, "bob") as bob:
            await bob.ok("room.join", {"room": "r"})
            async with connect(node, "alice") as alice:
                at = Positions(alice.welcome)
                at.joined(await alice.ok("room.join", {"room": "r"}))
                await bob.push("room.joined")
                await drop(alice)
            left = await bob.push("room.left")  # once the window has passed
            assert left["data"]["user"] == "alice"
            async with resumed(node, "alice", at.resume()) as (_again, welcome):
                assert welcome["resumed"] is False and welcome["reason"] == "expired"
                assert welcome["session"] != at.session and welcome["seq"] == 0


async def test_a_forged_or_foreign_token_resumes_nothing(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    with trio.fail_after(10):
        async with connect(node, "alice") as alice:
            at = Positions(alice.welcome)
            at.joined(await alice.ok("room.join", {"room": "secret"}))
            head, _, _ = at.token.partition(".")
            for token in ("nonsense", f"{head}.AAAA", at.token[:-2] + "xx"):
                async with resumed(node, "alice", at.resume(token)) as (_other, welcome):
                    assert welcome["resumed"] is False and welcome["reason"] == "invalid_token"
                    assert welcome["session"] != at.session and "replayed" not in welcome
            # mallory presents alice's real token: it is alice's, not hers.
            async with resumed(node, "mallory", at.resume()) as (mallory, welcome):
                assert welcome["resumed"] is False and welcome["reason"] == "invalid_token"
                assert (await mallory.call("room.members", {"room": "secret"}))["error"][
                    "code"
                ] == "not_in_room"
            assert await alice.ok("users.online", {})  # untouched


async def test_a_message_sent_again_after_a_resume_is_answered_once(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node()
    with trio.fail_after(10):
        async with connect(node, "bob") as bob:
            await bob.ok("room.join", {"room": "r"})
            async with connect(node, "alice") as alice:
                at = Positions(alice.welcome)
                at.joined(await alice.ok("room.join", {"room": "r"}))
                send = {"to": {"room": "r"}, "data": text("once")}
                first = await alice.ok("send", send, cmid="m-1")
                await drop(alice)
            async with resumed(node, "alice", at.resume()) as (again, welcome):
                assert welcome["resumed"] is True
                second = await again.ok("send", send, cmid="m-1")  # its ack was lost, say
                assert second == first
            # A new session (no resume) sending it again: recognised by the room's stream.
            async with connect(node, "alice") as fresh:
                await fresh.ok("room.join", {"room": "r"})
                third = await fresh.ok("send", send, cmid="m-1")
                assert third["messageId"] == first["messageId"]
                assert third["offset"] == first["offset"]
            bob_saw = [await bob.push("message")]
            await bob.ok("send", {"to": {"room": "r"}, "data": text("marker")})
            bob_saw.append(await bob.push("message"))
            contents = [p["data"]["payload"]["content"] for p in bob_saw]
            assert contents == ["once", "marker"]  # delivered once


async def test_a_resume_past_what_history_holds_names_the_gap(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node(history={"max_messages": 3})
    with trio.fail_after(10):
        async with connect(node, "bob") as bob:
            await bob.ok("room.join", {"room": "r"})
            await bob.ok("room.join", {"room": "quiet"})
            async with connect(node, "alice") as alice:
                at = Positions(alice.welcome)
                at.joined(await alice.ok("room.join", {"room": "r"}))
                at.joined(await alice.ok("room.join", {"room": "quiet"}))
                await drop(alice)
            for i in range(5):
                await bob.ok("send", {"to": {"room": "r"}, "data": text(f"missed {i}")})
            await bob.ok("send", {"to": {"room": "quiet"}, "data": text("kept")})
            async with resumed(node, "alice", at.resume()) as (again, welcome):
                assert welcome["resumed"] is True
                assert welcome["gaps"] == [{"ns": "/", "room": "r"}]
                assert welcome["replayed"] == 1  # what it could: the quiet room's message
                push = await again.push("message")
                assert push["data"]["payload"]["content"] == "kept"


async def test_room_history_since_a_position_or_the_last_messages(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node(history={"max_messages": 4})
    with trio.fail_after(10):
        async with connect(node, "alice") as alice, connect(node, "bob") as bob:
            await alice.ok("room.join", {"room": "r"})
            acks = []
            for i in range(6):
                acks.append(await alice.ok("send", {"to": {"room": "r"}, "data": text(f"m{i}")}))
            last = await alice.ok("room.history", {"room": "r", "limit": 2})
            assert [m["data"]["payload"]["content"] for m in last["messages"]] == ["m4", "m5"]
            assert last["offset"] == 6 and all("seq" not in m for m in last["messages"])
            since = {"epoch": acks[2]["epoch"], "offset": acks[2]["offset"]}
            after = await alice.ok("room.history", {"room": "r", "since": since})
            assert [m["offset"] for m in after["messages"]] == [4, 5, 6]
            gone = {"epoch": acks[0]["epoch"], "offset": acks[0]["offset"]}
            gap = await alice.call("room.history", {"room": "r", "since": gone})
            assert gap["error"]["code"] == "history_gap"  # only 4 are kept
            outsider = await bob.call("room.history", {"room": "r"})
            assert outsider["error"]["code"] == "not_in_room"


async def test_the_online_list_is_pushed_to_subscribers_on_change(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node()
    with trio.fail_after(10):
        async with connect(node, "alice") as alice:
            assert await alice.ok("users.subscribe", {}) == {"users": ["alice"]}
            async with connect(node, "bob"):
                assert (await alice.push("users.online"))["data"] == {"users": ["alice", "bob"]}
                async with connect(node, "bob"):  # bob's second connection: no change
                    pass
            assert (await alice.push("users.online"))["data"] == {"users": ["alice"]}
            await alice.ok("users.unsubscribe", {})
            async with connect(node, "cy"):
                assert await alice.ok("users.online", {}) == {"users": ["alice", "cy"]}
            assert not [f for f in alice.backlog if f.get("event") == "users.online"]


async def test_a_claim_made_again_by_the_same_node_gets_the_same_answer(
    start_node: Callable[..., Any],
) -> None:
    """A node resuming one of this node's sessions may ask again when the first answer is
    late; it gets the session again, not "unknown". Another node does not."""
    node: Node = await start_node()
    with trio.fail_after(10):
        async with connect(node, "alice") as alice:
            session = alice.welcome["session"]
            await alice.ok("room.join", {"room": "r"})
            await drop(alice)
            await wait_until(lambda: node.sessions.detached_count == 1)
        first = await node.sessions.on_claim([session, "alice"], "nodeB")
        again = await node.sessions.on_claim([session, "alice"], "nodeB")
        other = await node.sessions.on_claim([session, "alice"], "nodeC")
    assert first["found"] and again == first
    assert not other["found"]


async def test_a_session_resumed_twice_before_its_first_direct_message_still_gets_it(
    start_node: Callable[..., Any],
) -> None:
    """A new session's inbox position is an empty epoch until its first direct message, and a
    resume replays from it what was numbered since the session *began* (its first welcome, less
    the clocks' slack), not since its last welcome: a client that resumed, and lost the
    connection again before it read what was replayed, still holds that position, with the
    newer token. (Under a frozen node, 400 bench clients reconnecting over and over lost
    direct messages this way.)"""
    from roomd.cluster import CLOCK_SLACK

    node: Node = await start_node()
    with trio.fail_after(15):
        async with connect(node, "bob") as bob:
            async with connect(node, "alice") as alice:
                at = Positions(alice.welcome)
                assert at.inbox == {"epoch": "", "offset": 0}  # (nothing numbered yet)
                await drop(alice)
            await bob.ok("send", {"to": {"user": "alice"}, "data": text("first")})
            await trio.sleep(CLOCK_SLACK + 0.2)  # (the next welcome is later than the slack)
            async with resumed(node, "alice", at.resume()) as (again, welcome):
                assert welcome["replayed"] == 1
                token = welcome["resumeToken"]
                await drop(again)  # gone before it read what was replayed
            async with resumed(node, "alice", at.resume(token)) as (third, welcome):
                assert welcome["resumed"] is True and welcome["replayed"] == 1
                push = await third.push("message")
                assert push["data"]["payload"]["content"] == "first"

"""Sessions across the nodes of a real cluster (broker and node processes): a session resumes on
another node, also after its node was killed; a room's messages come in one order everywhere;
a direct message right after its addressee's welcome is not lost."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from roomd.client import Backoff, Client
from roomd.cluster import room_stream
from roomd.cluster._streams import ranking
from tests.cluster_support import running_cluster
from tests.support import connect
from tests.test_sessions import Positions, drop, resumed, text

pytestmark = pytest.mark.cluster


async def _started_again(cluster: Any, name: str) -> None:
    """Start node ``name`` again once its killed process has exited; returns when nodeC has
    heard of its new life."""
    process = cluster.nodes[name].process
    assert process is not None
    await process.wait()
    lines = len(cluster.nodes["nodeC"].lines)
    await cluster.start_node(name, 2)
    await cluster.nodes["nodeC"].wait_for(rf"{name} (restarted|is up)", lines)


def _room_numbered_by(node: str) -> str:
    """A room whose stream ``node`` numbers in the cluster of nodeA, nodeB and nodeC."""
    nodes = ["nodeA", "nodeB", "nodeC"]
    return next(
        r for r in (f"r{i}" for i in range(100)) if ranking(room_stream("/", r), nodes)[0] == node
    )


async def test_a_session_resumes_on_another_node_with_what_it_missed(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path) as cluster:
            a, b, c = (cluster.node(n) for n in ("nodeA", "nodeB", "nodeC"))
            async with connect(c, "carol") as carol:
                await carol.ok("room.join", {"room": "r"})
                async with connect(a, "alice") as alice:
                    at = Positions(alice.welcome)
                    at.joined(await alice.ok("room.join", {"room": "r"}))
                    await carol.push("room.joined")
                    await drop(alice)
                sent = [await carol.ok("send", {"to": {"room": "r"}, "data": text(f"m{i}")})
                        for i in range(4)]  # fmt: skip
                await carol.ok("send", {"to": {"user": "alice"}, "data": text("dm")})
                async with resumed(b, "alice", at.resume()) as (again, welcome):
                    assert welcome["resumed"] is True and welcome["node"] == "nodeB"
                    assert welcome["session"] == at.session and welcome["replayed"] == 5
                    missed = [await again.push("message") for _ in range(5)]
                    contents = [p["data"]["payload"]["content"] for p in missed]
                    assert contents == ["m0", "m1", "m2", "m3", "dm"]
                    assert [p["offset"] for p in missed[:4]] == [s["offset"] for s in sent]
                    await carol.ok("send", {"to": {"room": "r"}, "data": text("live")})
                    live = await again.push("message")
                    assert live["data"]["payload"]["content"] == "live"
                    # carol never saw alice leave (the handover is announced before the end)
                    await trio.sleep(0.5)
                    assert not [f for f in carol.backlog if f.get("event") == "room.left"]
                    members = await carol.ok("room.members", {"room": "r"})
                    assert [m["user"] for m in members["members"]] == ["alice", "carol"]


async def test_a_resume_elsewhere_closes_the_old_connection_with_4012(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path, count=2) as cluster:
            a, b = cluster.node("nodeA"), cluster.node("nodeB")
            async with connect(a, "alice") as old:
                at = Positions(old.welcome)
                at.joined(await old.ok("room.join", {"room": "r"}))
                await old.ok("send", {"to": {"room": "r"}, "data": text("x")}, cmid="c1")
                async with resumed(b, "alice", at.resume()) as (new, welcome):
                    assert welcome["resumed"] is True
                    assert (await old.closed())[0] == 4012
                    # the dedupe window came along: the same cmid is answered, not sent again
                    again = await new.ok(
                        "send", {"to": {"room": "r"}, "data": text("x")}, cmid="c1"
                    )
                    assert again["offset"] == 1


async def test_a_session_resumes_after_its_node_was_killed(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_cluster(tmp_path) as cluster:
            a, b, c = (cluster.node(n) for n in ("nodeA", "nodeB", "nodeC"))
            async with connect(c, "carol") as carol:
                await carol.ok("room.join", {"room": "r"})
                async with connect(a, "alice") as alice:
                    at = Positions(alice.welcome)
                    at.joined(await alice.ok("room.join", {"room": "r"}))
                    await carol.ok("send", {"to": {"room": "r"}, "data": text("seen")})
                    at.saw(await alice.push("message"))
                    cluster.nodes["nodeA"].kill()
                    sent = []
                    for i in range(4):  # acknowledged: whoever numbers the room now holds them
                        sent.append(
                            await carol.ok("send", {"to": {"room": "r"}, "data": text(f"m{i}")})
                        )
                async with resumed(b, "alice", at.resume()) as (again, welcome):
                    assert welcome["resumed"] is True and welcome["session"] == at.session
                    missed = [await again.push("message") for _ in range(welcome["replayed"])]
                    contents = [p["data"]["payload"]["content"] for p in missed]
                    assert contents == ["m0", "m1", "m2", "m3"]  # nothing lost, nothing twice
                    await carol.ok("send", {"to": {"room": "r"}, "data": text("live")})
                    assert (await again.push("message"))["data"]["payload"]["content"] == "live"


@pytest.mark.parametrize("where", ["nodeA", "nodeB"])
async def test_a_session_resumes_after_its_node_was_killed_and_restarted(
    tmp_path: Path, where: str
) -> None:
    """Its node is back (the same name, a new life) before the client resumes: on it, or on
    another node that now knows only the new life, the session continues from the streams."""
    with trio.fail_after(40):
        async with running_cluster(tmp_path) as cluster:
            a, c = cluster.node("nodeA"), cluster.node("nodeC")
            async with connect(c, "carol") as carol:
                await carol.ok("room.join", {"room": "r"})
                async with connect(a, "alice") as alice:
                    at = Positions(alice.welcome)
                    at.joined(await alice.ok("room.join", {"room": "r"}))
                    await carol.push("room.joined")
                    cluster.nodes["nodeA"].kill()
                    sent = [await carol.ok("send", {"to": {"room": "r"}, "data": text(f"m{i}")})
                            for i in range(3)]  # fmt: skip
                await _started_again(cluster, "nodeA")
                async with resumed(cluster.node(where), "alice", at.resume()) as (again, welcome):
                    assert welcome["resumed"] is True, welcome
                    assert welcome["session"] == at.session
                    missed = [await again.push("message") for _ in range(welcome["replayed"])]
                    contents = [p["data"]["payload"]["content"] for p in missed]
                    assert contents == ["m0", "m1", "m2"]
                    assert [p["offset"] for p in missed] == [s["offset"] for s in sent]


async def test_every_member_sees_a_rooms_messages_in_one_order(tmp_path: Path) -> None:
    """Senders on three nodes at once: every member, on every node, gets the same sequence."""
    per_sender = 30
    with trio.fail_after(40):
        async with running_cluster(tmp_path) as cluster:
            nodes = [cluster.node(n) for n in ("nodeA", "nodeB", "nodeC")]
            async with (
                connect(nodes[0], "ann") as ann,
                connect(nodes[1], "ben") as ben,
                connect(nodes[2], "cyd") as cyd,
            ):
                members = (ann, ben, cyd)
                for member in members:
                    await member.ok("room.join", {"room": "r"})
                await trio.sleep(0.3)  # everyone's join is known everywhere

                async def send_all(member: Any, name: str) -> None:
                    for i in range(per_sender):
                        data = {"to": {"room": "r"}, "data": text(f"{name}{i}")}
                        await member.send({"type": "event", "event": "send", "data": data})

                async with trio.open_nursery() as nursery:
                    for member, name in zip(members, ("a", "b", "c"), strict=True):
                        nursery.start_soon(send_all, member, name)
                orders = []
                for member in members:
                    pushes = [await member.push("message") for _ in range(3 * per_sender)]
                    orders.append([p["data"]["payload"]["content"] for p in pushes])
                    assert [p["offset"] for p in pushes] == list(range(1, 3 * per_sender + 1))
                assert orders[0] == orders[1] == orders[2]
                assert sorted(orders[0]) == sorted(f"{n}{i}" for n in "abc" for i in range(30))


@pytest.mark.parametrize("delay_ms", [0, 1, 2, 5, 10])
async def test_a_direct_message_right_after_the_welcome_arrives(
    tmp_path: Path, delay_ms: int
) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path, count=2) as cluster:
            a, b = cluster.node("nodeA"), cluster.node("nodeB")
            async with connect(b, "bob") as bob:
                for attempt in range(5):
                    user = f"alice{attempt}"
                    async with connect(a, user) as alice:  # returns once welcomed
                        await trio.sleep(delay_ms / 1000)
                        ack = await bob.ok("send", {"to": {"user": user}, "data": text("hi")})
                        assert "messageId" in ack
                        push = await alice.push("message")
                        assert push["data"]["payload"]["content"] == "hi"


async def test_a_drained_nodes_clients_move_to_the_others_with_nothing_lost(
    tmp_path: Path,
) -> None:
    """Clients in a room, messages to the room and to them while their node drains: every
    client ends on another node and got every message once, in order; the node exits."""
    count = 60
    with trio.fail_after(40):
        async with running_cluster(tmp_path) as cluster:
            port_a = cluster.ports["nodeA"]
            urls = [f"ws://127.0.0.1:{cluster.ports[n]}" for n in ("nodeA", "nodeB", "nodeC")]
            async with connect(cluster.node("nodeB"), "bob") as bob, trio.open_nursery() as nursery:
                await bob.ok("room.join", {"room": "r"})
                clients = []
                for user in ("ann", "amy", "abe"):
                    client = Client(urls[0], urls=urls[1:], user=user, backoff=Backoff(0.05, 0.5))
                    await nursery.start(client.run)
                    await client.join("r")
                    clients.append(client)
                got = {c.user: c.subscribe("message", size=1000) for c in clients}
                await trio.sleep(0.3)  # their joins known everywhere

                async def send() -> None:
                    for i in range(count):
                        data = {"to": {"room": "r"}, "data": text(f"r{i}")}
                        await bob.ok("send", data)
                        if i % 10 == 0:
                            await bob.ok("send", {"to": {"user": "ann"}, "data": text(f"dm{i}")})
                        await trio.sleep(0.02)

                nursery.start_soon(send)
                await trio.sleep(0.2)
                drained = await trio.run_process(
                    [sys.executable, "-m", "roomd.cli", "drain", f"http://127.0.0.1:{port_a}"],
                    capture_stdout=True,
                )
                assert b'"draining":true' in drained.stdout
                node_a = cluster.nodes["nodeA"].process
                assert node_a is not None
                assert await node_a.wait() == 0  # it stopped once empty
                for client in clients:
                    assert client.node in ("nodeB", "nodeC") and client.resumed
                dms = count // 10
                for client in clients:
                    expected = count + (dms if client.user == "ann" else 0)
                    pushes = [await got[client.user].receive() for _ in range(expected)]
                    room = [p for p in pushes if p.room is not None]
                    assert [p.data["payload"]["content"] for p in room] == [
                        f"r{i}" for i in range(count)
                    ]
                    assert [p.offset for p in room] == sorted({p.offset for p in room})
                    assert len(got[client.user]) == 0  # nothing twice
                for client in clients:
                    await client.aclose()


async def test_a_session_up_to_date_resumes_on_its_restarted_sequencer_with_nothing_twice(
    tmp_path: Path,
) -> None:
    """The room's sequencer is killed and started again, and a member who had everything
    resumes on it. Reading the room for the resume makes the node take the stream over, and it
    delivers what it gathered from the others to its members there, the resuming session among
    them: held until the welcome, none of it may reach the client again. (`roomd bench
    --workloads fault-restart` caught a member getting the whole room twice, two runs in
    twelve.)"""
    room = _room_numbered_by("nodeA")
    with trio.fail_after(40):
        async with running_cluster(tmp_path) as cluster:
            a, c = cluster.node("nodeA"), cluster.node("nodeC")
            async with connect(c, "carol") as carol:
                await carol.ok("room.join", {"room": room})
                async with connect(a, "alice") as alice:
                    at = Positions(alice.welcome)
                    at.joined(await alice.ok("room.join", {"room": room}))
                    for i in range(3):
                        await carol.ok("send", {"to": {"room": room}, "data": text(f"m{i}")})
                        at.saw(await alice.push("message"))
                    cluster.nodes["nodeA"].kill()
                await _started_again(cluster, "nodeA")
                async with resumed(cluster.node("nodeA"), "alice", at.resume()) as (again, welcome):
                    assert welcome["resumed"] is True and not welcome.get("replayed"), welcome
                    await carol.ok("send", {"to": {"room": room}, "data": text("live")})
                    push = await again.push("message")
                    assert push["data"]["payload"]["content"] == "live"
                    assert push["offset"] == 4


async def test_a_fresh_join_on_a_restarted_sequencer_gets_nothing_from_before(
    tmp_path: Path,
) -> None:
    """A restarted sequencer that has not taken a room over yet answers a fresh join at once
    (an empty-epoch position); taking the room over later, it must not push the new member
    what was numbered before it joined."""
    room = _room_numbered_by("nodeA")
    with trio.fail_after(40):
        async with running_cluster(tmp_path) as cluster:
            async with connect(cluster.node("nodeC"), "carol") as carol:
                await carol.ok("room.join", {"room": room})
                for i in range(3):
                    await carol.ok("send", {"to": {"room": room}, "data": text(f"m{i}")})
                cluster.nodes["nodeA"].kill()
                await _started_again(cluster, "nodeA")
                async with connect(cluster.node("nodeA"), "dave") as dave:
                    await dave.ok("room.join", {"room": room})
                    await carol.ok("send", {"to": {"room": room}, "data": text("live")})
                    first = (await dave.push("message"))["data"]["payload"]["content"]
    assert first == "live"  # (it was "m0": the take-over pushed what it gathered)

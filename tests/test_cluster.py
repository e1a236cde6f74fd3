"""Clusters of real processes: a broker (or a mesh) and three nodes on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster_support import HEARTBEAT, health, metrics, running_cluster
from tests.support import RawClient, connect

pytestmark = pytest.mark.cluster


def text(content: str) -> dict[str, Any]:
    return {"type": "text", "payload": {"content": content}}


async def converge(client: RawClient, event: str, predicate: Any, data: Any = None) -> Any:
    """Ask ``event`` until ``predicate(result)`` holds (the cluster view is eventually
    consistent; each round trip lets the nodes exchange a few more bus messages)."""
    for _ in range(200):
        result = await client.ok(event, data or {})
        if predicate(result):
            return result
        await trio.sleep(0.02)
    raise AssertionError(f"{event} never satisfied the predicate; last: {result}")


async def joined_user(client: RawClient, user: str) -> dict[str, Any]:
    """The ``room.joined`` push about ``user``. Others may come first: a node may learn of an
    earlier member after its own client joined, and then says so."""
    for _ in range(100):
        push = await client.push("room.joined")
        if push["data"]["user"] == user:
            return push
    raise AssertionError(f"no room.joined for {user}")


@pytest.mark.parametrize("mode", ["broker", "mesh"])
async def test_every_send_mode_across_nodes(tmp_path: Path, mode: str) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path, mode) as cluster:
            a, b, c = (cluster.node(n) for n in ("nodeA", "nodeB", "nodeC"))
            async with (
                connect(a, "alice") as alice,
                connect(b, "bob") as bob,
                connect(c, "carol") as carol,
                connect(c, "bob") as bob2,
            ):
                for x in (alice, bob, carol):
                    await x.ok("room.join", {"room": "lobby"})
                await converge(
                    alice, "room.members", lambda r: len(r["members"]) == 3, {"room": "lobby"}
                )
                # To a room: every member on every node, bob's second connection is not in it.
                await alice.ok("send", {"to": {"room": "lobby"}, "data": text("to room")})
                for x in (alice, bob, carol):
                    assert (await x.push("message"))["data"]["payload"]["content"] == "to room"
                # To a user: all of bob's connections on two nodes, and alice's own others.
                async with connect(b, "alice") as alice2:
                    # Until nodeA knows of alice's connection on nodeB, it sends her no copy.
                    await converge(
                        alice,
                        "room.members",
                        lambda r: [m["connections"] for m in r["members"]] == [2, 2, 1],
                        {"room": "lobby"},
                    )
                    await carol.ok("send", {"to": {"user": "bob"}, "data": text("dm")})
                    for x in (bob, bob2):
                        push = await x.push("message")
                        assert push["to"] == ["bob"] and push["from"] == "carol"
                    await alice.ok(
                        "send", {"to": {"users": ["bob", "carol"]}, "data": text("group")}
                    )
                    for x in (bob, bob2, carol, alice2):
                        assert (await x.push("message"))["data"]["payload"]["content"] == "group"
                    # To everyone: every connection on every node, the sender's own included.
                    await bob2.ok("send", {"to": {"all": True}, "data": text("everyone")})
                    for x in (alice, alice2, bob, bob2, carol):
                        push = await x.push("message")
                        assert push["data"]["payload"]["content"] == "everyone"
                # Nothing was delivered twice.
                for x in (alice, bob, carol, bob2):
                    await x.ok("users.online", {})  # (alice2 has gone)
                    assert not [f for f in x.backlog if f.get("event") == "message"]


async def test_presence_converges_and_remote_joins_are_pushed(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path) as cluster:
            a, b, c = (cluster.node(n) for n in ("nodeA", "nodeB", "nodeC"))
            async with connect(a, "alice") as alice, connect(b, "bob") as bob:
                await alice.ok("room.join", {"room": "r", "ns": "chat"})
                await bob.ok("room.join", {"room": "r", "ns": "chat"})
                joined = await joined_user(alice, "bob")
                assert joined["data"] == {"ns": "chat", "room": "r", "user": "bob"}
                async with connect(c, "carol") as carol:
                    await carol.ok("room.join", {"room": "r", "ns": "chat"})
                    for x in (alice, bob):
                        await joined_user(x, "carol")
                    members = await carol.ok("room.members", {"room": "r", "ns": "chat"})
                    assert [m["user"] for m in members["members"]] == ["alice", "bob", "carol"]
                    await bob.ok("status", {"status": "away"})
                    assert (await carol.push("status"))["data"]["status"] == "away"
                    stats = await carol.ok("cluster.stats")
                    assert [n["name"] for n in stats["nodes"]] == ["nodeA", "nodeB", "nodeC"]
                    assert stats["usersOnline"] == 3
                    assert stats["rooms"] == [{"ns": "chat", "room": "r", "members": 3}]
                left = await alice.push("room.left")
                assert left["data"]["user"] == "carol"
                await converge(bob, "users.online", lambda r: r["users"] == ["alice", "bob"])


async def test_killed_node_users_leave_everywhere(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path) as cluster:
            a, c = cluster.node("nodeA"), cluster.node("nodeC")
            async with connect(a, "alice") as alice, connect(c, "carol") as carol:
                await alice.ok("room.join", {"room": "r"})
                await carol.ok("room.join", {"room": "r"})
                await alice.push("room.joined")
                start = len(cluster.nodes["nodeA"].lines)
                cluster.nodes["nodeC"].kill()  # SIGKILL: no goodbye
                killed_at = trio.current_time()
                left = await alice.push("room.left")
                elapsed = trio.current_time() - killed_at
                assert left["data"]["user"] == "carol"
                # Three missed heartbeats of 0.2 s, plus one sweep.
                assert elapsed < 3 * 0.2 + 1.0
                await cluster.nodes["nodeA"].wait_for("node nodeC is down", start)
                assert (await alice.ok("users.online", {}))["users"] == ["alice"]
                members = await alice.ok("room.members", {"room": "r"})
                assert [m["user"] for m in members["members"]] == ["alice"]


async def test_health_shows_the_bus_and_nodes_that_left_or_went_down(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path) as cluster:
            port_a = cluster.ports["nodeA"]
            before = await trio.to_thread.run_sync(health, port_a)
            nodes = {n["name"]: n for n in before["cluster"]["nodes"]}
            assert {n: nodes[n]["status"] for n in nodes} == dict.fromkeys(nodes, "up")
            assert len(nodes) == 3 and before["cluster"]["bus"]["live"] is True
            mark = len(cluster.nodes["nodeA"].lines)
            # A graceful stop says goodbye: nodeA forgets nodeB at once, not heartbeats later.
            assert await cluster.nodes["nodeB"].stop() == 0
            await cluster.nodes["nodeA"].wait_for("node nodeB left", mark)
            cluster.nodes["nodeC"].kill()
            await cluster.nodes["nodeA"].wait_for("node nodeC is down", mark)
            after = await trio.to_thread.run_sync(health, port_a)
            statuses = {n["name"]: n["status"] for n in after["cluster"]["nodes"]}
            assert statuses == {"nodeA": "up", "nodeB": "left", "nodeC": "down"}
            assert after["cluster"]["bus"]["live"] is True
            samples = await trio.to_thread.run_sync(metrics, port_a)
            assert samples["roomd_bus_live"] == 1 and samples["roomd_cluster_nodes_up"] == 1


async def test_a_node_that_stops_with_clients_is_left_and_never_up_again(tmp_path: Path) -> None:
    """Its clients' goodbyes (presence changes still in their window) go out before its own,
    and nothing after it: the others list it as left, not up, then down heartbeats later."""
    with trio.fail_after(30):
        async with running_cluster(tmp_path) as cluster:
            b = cluster.node("nodeB")
            async with connect(b, "bob") as bob, connect(b, "bea") as bea:
                await bob.ok("room.join", {"room": "r"})
                await bea.ok("room.join", {"room": "r"})
                marks = {n: len(cluster.nodes[n].lines) for n in ("nodeA", "nodeC")}
                assert await cluster.nodes["nodeB"].stop() == 0
            for name, mark in marks.items():
                await cluster.nodes[name].wait_for("node nodeB left", mark)
            # Longer than the heartbeat timeout: a node announced again would now be "down".
            await trio.sleep(HEARTBEAT * 3 * 2)
            for name, mark in marks.items():
                said = "\n".join(cluster.nodes[name].lines[mark:])
                assert "node nodeB is up" not in said and "node nodeB is down" not in said
                report = await trio.to_thread.run_sync(health, cluster.ports[name])
                statuses = {n["name"]: n["status"] for n in report["cluster"]["nodes"]}
                assert statuses["nodeB"] == "left"
                assert report["cluster"]["usersOnline"] == 0


async def test_a_broker_restart_loses_no_room_message(tmp_path: Path) -> None:
    """Messages sent while the broker is down are acknowledged once their room's sequencer has
    them (after the broker is back, if it is another node), and every member gets every one,
    once, in order: nodes catch up the streams they read when their bus is live again."""
    with trio.fail_after(40):
        async with running_cluster(tmp_path, count=2) as cluster:
            a, b = cluster.node("nodeA"), cluster.node("nodeB")
            procs = list(cluster.nodes.values())
            async with connect(a, "alice") as alice, connect(b, "bob") as bob:
                await alice.ok("room.join", {"room": "r"})
                await bob.ok("room.join", {"room": "r"})
                await alice.push("room.joined")
                assert cluster.broker is not None and cluster.broker.process is not None
                marks = [len(p.lines) for p in procs]
                cluster.broker.kill()
                await cluster.broker.process.wait()
                for proc, mark in zip(procs, marks, strict=True):
                    await proc.wait_for("bus is down", mark)
                samples = await trio.to_thread.run_sync(metrics, cluster.ports["nodeA"])
                assert samples["roomd_bus_live"] == 0
                for i in range(20):  # not awaited: acknowledged once numbered
                    data = {"to": {"room": "r"}, "event": "during", "data": i}
                    await bob.send({"type": "event", "id": 100 + i, "event": "send", "data": data})
                async with connect(b, "carol") as carol:  # presence changes meanwhile
                    await carol.ok("room.join", {"room": "r"})
                    marks = [len(p.lines) for p in procs]
                    await cluster.restart_broker()
                    for proc, mark in zip(procs, marks, strict=True):
                        await proc.wait_for("bus is live", mark)
                    for i in range(20):
                        ack = await bob.expect("ack", id=100 + i)
                        assert "error" not in ack, ack
                    for i in range(20):
                        await bob.ok("send", {"to": {"room": "r"}, "event": "after", "data": i})
                    got = []
                    while len(got) < 40:
                        push = await alice.push()
                        if push["event"] in ("during", "after"):
                            got.append((push["event"], push["data"]))
                    assert got == [("during", i) for i in range(20)] + [
                        ("after", i) for i in range(20)
                    ]
                    # The views resynchronise: carol, who joined during the outage, is a member.
                    await converge(
                        alice,
                        "room.members",
                        lambda r: [m["user"] for m in r["members"]] == ["alice", "bob", "carol"],
                        {"room": "r"},
                    )


async def test_gap_on_the_bus_triggers_a_snapshot(tmp_path: Path) -> None:
    from roomd.cluster import _wire
    from roomd.io import make_keys, read_keypair, read_public_key
    from roomd.io._zmq import SocketType, make_context, open_socket

    with trio.fail_after(30):
        async with running_cluster(tmp_path, count=2) as cluster:
            text = cluster.config_path.read_text()
            front = text.split('broker_frontend = "')[1].split('"')[0]
            back = text.split('broker_backend = "')[1].split('"')[0]
            # A process the broker trusts (its public key is in the key directory).
            make_keys(tmp_path / "keys", ["ghost"])
            keys = read_keypair(tmp_path / "keys" / "ghost.key_secret")
            broker_key = read_public_key(tmp_path / "keys" / "broker.key")
            ctx = make_context()
            try:
                async with (
                    open_socket(ctx, SocketType.PUB, keys=keys) as pub,
                    open_socket(ctx, SocketType.SUB, keys=keys) as sub,
                ):
                    pub.connect(front, broker_key)
                    sub.connect(back, broker_key)
                    sub.subscribe(_wire.node_topic("ghost"))
                    sub.subscribe(_wire.CONTROL)
                    await sub.receive()  # a real node's heartbeat: our subscription is live
                    seq = 0

                    def send(topic: bytes, kind: str, body: Any) -> None:
                        nonlocal seq
                        seq += 1
                        pub.send_nowait(_wire.encode(topic, kind, "ghost", 7, seq, body))

                    async def snapshot_request() -> str:
                        for _ in range(10_000):
                            for env in _wire.decode_all(await sub.receive()):
                                if env.kind == _wire.Kind.SNAPSHOT_REQUEST:
                                    return str(env.body)
                        raise AssertionError("no snapshot request")

                    # A node nobody knew: its state is fetched.
                    # (draining: it is asked to number no stream, which a fake node cannot do)
                    send(_wire.CONTROL, _wire.Kind.HEARTBEAT, [0, {"status": "draining"}])
                    asked_by = {await snapshot_request(), await snapshot_request()}
                    assert asked_by == {"nodeA", "nodeB"}
                    state = {"users": {"ghostuser": 1}, "rooms": [], "statuses": []}
                    for name in asked_by:  # a snapshot goes to the node that asked
                        send(_wire.node_topic(name), _wire.Kind.SNAPSHOT, [1, state])
                    async with connect(cluster.node("nodeA"), "alice") as alice:
                        await converge(alice, "users.online", lambda r: "ghostuser" in r["users"])
                        # Delta 2 in order, then delta 4: 3 is missing.
                        send(_wire.CONTROL, _wire.Kind.DELTAS, [2, [["on", "ghost2", 1]]])
                        await converge(alice, "users.online", lambda r: "ghost2" in r["users"])
                        send(_wire.CONTROL, _wire.Kind.DELTAS, [4, [["on", "ghost4", 1]]])
                        asked_by = {await snapshot_request(), await snapshot_request()}
                        assert asked_by == {"nodeA", "nodeB"}
                        users = (await alice.ok("users.online", {}))["users"]
                        assert "ghost4" not in users  # held back until the snapshot
                        state["users"] = {"ghostuser": 1, "ghost2": 1, "ghost3": 1}
                        for name in asked_by:
                            send(_wire.node_topic(name), _wire.Kind.SNAPSHOT, [3, state])
                        await converge(
                            alice,
                            "users.online",
                            lambda r: {"ghost3", "ghost4"} <= set(r["users"]),
                        )
            finally:
                ctx.destroy(linger=0)


async def test_mesh_peer_stops_and_comes_back(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_cluster(tmp_path, "mesh") as cluster:
            a, b = cluster.node("nodeA"), cluster.node("nodeB")
            async with connect(a, "alice") as alice:
                await alice.ok("room.join", {"room": "r"})
                node_a = cluster.nodes["nodeA"]
                start = len(node_a.lines)
                cluster.nodes["nodeB"].kill()
                await node_a.wait_for("node nodeB is down", start)
                start = len(node_a.lines)
                await cluster.start_node("nodeB", expect_peers=2)
                await node_a.wait_for("node nodeB is up", start)
                async with connect(b, "bob") as bob:
                    await bob.ok("room.join", {"room": "r"})
                    await joined_user(alice, "bob")
                    for attempt in range(500):  # until bob's node has alice's subscription
                        await bob.ok("send", {"to": {"room": "r"}, "event": "p", "data": attempt})
                        with trio.move_on_after(0.05):
                            await alice.push("p")
                            break
                    await bob.ok("send", {"to": {"user": "alice"}, "event": "dm", "data": 1})
                    assert (await alice.push("dm"))["from"] == "bob"

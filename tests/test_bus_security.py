"""CurveZMQ on the cluster bus, with real broker and node processes: what travels on the wire,
who gets in, and what an operator is told (docs/cluster.md, "Security")."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import trio

from roomd.io import make_keys
from tests.cluster_support import (
    ClusterHandle,
    Proc,
    distinct_matches,
    free_ports,
    metrics,
    running_cluster,
)
from tests.support import connect
from tests.test_cluster import converge, text

pytestmark = pytest.mark.cluster

ROOM = "quarterly-figures-room"
PAYLOAD = "the-numbers-are-up-4711"


@pytest.mark.parametrize("secure", [True, False], ids=["curve", "insecure"])
async def test_the_bus_carries_no_room_name_or_payload_in_clear(
    tmp_path: Path, secure: bool
) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path, count=2, secure=secure, relayed=True) as cluster:
            a, b = cluster.node("nodeA"), cluster.node("nodeB")
            async with connect(a, "alice") as alice, connect(b, "bob") as bob:
                for client in (alice, bob):
                    await client.ok("room.join", {"room": ROOM})
                await converge(
                    alice, "room.members", lambda r: len(r["members"]) == 2, {"room": ROOM}
                )
                await alice.ok("send", {"to": {"room": ROOM}, "data": text(PAYLOAD)})
                push = await bob.push("message")
                assert push["data"]["payload"]["content"] == PAYLOAD
            if not secure:
                await cluster.nodes["nodeA"].wait_for("cluster.insecure = true: the bus is plain")
    seen = b"".join(bytes(relay.seen) for relay in cluster.relays)
    assert all(relay.connections >= 2 for relay in cluster.relays)  # both nodes, both ways
    assert len(seen) > 2000
    words = (ROOM.encode(), PAYLOAD.encode(), b"alice", b"nodeA")
    if secure:
        assert [word for word in words if word in seen] == []
    else:  # the control: the relay does read what an insecure bus carries
        assert [word for word in words if word in seen] == list(words)


def _intruder(cluster: ClusterHandle, keys: Path, name: str = "intruder", *extra: str) -> Proc:
    (port,) = free_ports(1)
    argv = [sys.executable, "-m", "roomd.cli", "--name", name, "--port", str(port)]
    argv += ["--config", str(cluster.config_path), "--keys", str(keys), *extra]
    return Proc(name, argv)


async def test_a_node_with_an_unknown_key_cannot_publish_or_subscribe(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path, count=2) as cluster:
            keys = tmp_path / "keys"
            # Its own key directory: it knows the broker's public key, the broker not its key.
            other = tmp_path / "elsewhere"
            make_keys(other, ["intruder"])
            shutil.copy(keys / "broker.key", other)
            intruder = _intruder(cluster, other)
            plain = _intruder(cluster, other, "plain", "--insecure-bus")
            await intruder.start(cluster.nursery)
            await plain.start(cluster.nursery)
            # Its publisher and its subscriber are refused (and it says what to check).
            refusal = r"broker \((tcp://127\.0\.0\.1:\d+)\) refused this node's key \(400\): "
            refusal += r"is intruder\.key in its key directory\?"
            refused = await distinct_matches(intruder, refusal, 2)
            text = cluster.config_path.read_text()
            assert refused == {
                text.split(f'broker_{side} = "')[1].split('"')[0]
                for side in ("frontend", "backend")
            }
            stats = await cluster.broker_stats()
            assert stats.auth.publishers_refused >= 1 and stats.auth.subscribers_refused >= 1
            assert stats.auth.publishers_accepted == stats.auth.subscribers_accepted == 2
            # (libzmq reports a mismatch as such, or as a handshake that failed)
            await plain.wait_for("cluster.insecure must be the same on every node and broker")
            await plain.wait_for(r"cluster\.insecure = true")
            # Nothing it sent arrived: the others never heard of it.
            for name in ("nodeA", "nodeB"):
                assert not any("intruder" in line for line in cluster.nodes[name].lines)

            # Its key in the broker's directory: it is let in at its next try (every 2 s).
            start = len(cluster.nodes["nodeA"].lines)
            shutil.copy(other / "intruder.key", keys)
            await cluster.nodes["nodeA"].wait_for("node intruder is up", start)
            await intruder.wait_for("connected to broker")
            stats = await cluster.broker_stats()
            assert stats.auth.publishers_accepted == stats.auth.subscribers_accepted == 3
            for proc in (intruder, plain):
                proc.kill()


async def test_a_mesh_node_refuses_an_unknown_key(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_cluster(tmp_path, "mesh", count=2) as cluster:
            other = tmp_path / "elsewhere"
            make_keys(other, ["intruder"])
            for name in ("nodeA", "nodeB"):
                shutil.copy(tmp_path / "keys" / f"{name}.key", other)
            (bus,) = free_ports(1)
            intruder = _intruder(cluster, other, "intruder", "--bus", f"tcp://127.0.0.1:{bus}")
            await intruder.start(cluster.nursery)
            for name in ("nodeA", "nodeB"):
                await cluster.nodes[name].wait_for(
                    r"refused a subscriber from 127\.0\.0\.1: its key \S+ is not in"
                )
                await intruder.wait_for(rf"{name} \(tcp://127\.0\.0\.1:\d+\) refused this node")
                samples = await trio.to_thread.run_sync(metrics, cluster.ports[name])
                assert samples["roomd_bus_refused_total"] >= 1
            intruder.kill()

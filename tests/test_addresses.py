"""A cluster whose processes listen on different loopback addresses, and are reached at other
ones than they bind (as behind NAT or a port mapping): bind and advertised endpoints are
separate settings, and no code assumes 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from roomd import Node
from tests.cluster_support import Proc, TcpRelay, cluster_keys, free_ports, wait_peers
from tests.support import connect, make_config
from tests.test_cluster import converge, text

pytestmark = pytest.mark.cluster

HOSTS = {"nodeA": "127.0.0.2", "nodeB": "127.0.0.3"}
BROKER_HOST = "127.0.0.4"
RELAY_HOST = "127.0.0.5"  # where the others are told to reach a bus socket


def _node(host: str, port: int) -> Node:
    node = Node(make_config(node={"host": host, "port": port}))
    node.port = port
    return node


@pytest.mark.parametrize("mode", ["broker", "mesh"])
async def test_a_cluster_on_other_loopback_addresses(tmp_path: Path, mode: str) -> None:
    keys = cluster_keys(tmp_path / "keys", ["broker", *HOSTS])
    ports = {name: free_ports(1, host)[0] for name, host in HOSTS.items()}
    lines = ["[auth]", "dev = true", "[cluster]", f'mode = "{mode}"', f'keys = "{keys}"']
    lines += ["heartbeat_interval = 0.2"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relays: list[TcpRelay] = []

            async def relay(host: str, port: int) -> str:
                relays.append(TcpRelay((host, port), host=RELAY_HOST))
                return f"tcp://{RELAY_HOST}:{await nursery.start(relays[-1].run)}"

            procs = []
            if mode == "broker":
                front, back = free_ports(2, BROKER_HOST)
                broker = ["--frontend", f"tcp://{BROKER_HOST}:{front}"]
                broker += ["--backend", f"tcp://{BROKER_HOST}:{back}", "--keys", str(keys)]
                procs.append(Proc("broker", [sys.executable, "-m", "broker", *broker]))
                lines += [
                    "[[cluster.brokers]]",
                    'name = "broker"',
                    f'frontend = "{await relay(BROKER_HOST, front)}"',
                    f'backend = "{await relay(BROKER_HOST, back)}"',
                ]
            for name, host in HOSTS.items():
                lines += ["[[cluster.nodes]]", f'name = "{name}"', f'host = "{host}"']
                lines.append(f"port = {ports[name]}")
                if mode == "mesh":
                    (bus,) = free_ports(1, host)
                    lines.append(f'bus_bind = "tcp://{host}:{bus}"')
                    lines.append(f'bus = "{await relay(host, bus)}"')
            config = tmp_path / "cluster.toml"
            config.write_text("\n".join(lines) + "\n")
            node = [sys.executable, "-m", "roomd.cli", "--config", str(config)]
            procs += [Proc(name, [*node, "--name", name]) for name in HOSTS]
            for proc in procs:
                await proc.start(nursery)
            for proc in procs[-2:]:
                await proc.wait_for("cluster ready")
                await wait_peers(proc, 1)
            try:
                a = _node(HOSTS["nodeA"], ports["nodeA"])
                b = _node(HOSTS["nodeB"], ports["nodeB"])
                async with connect(a, "alice") as alice, connect(b, "bob") as bob:
                    for client in (alice, bob):
                        await client.ok("room.join", {"room": "lobby"})
                    await converge(
                        alice, "room.members", lambda r: len(r["members"]) == 2, {"room": "lobby"}
                    )
                    await bob.ok("send", {"to": {"room": "lobby"}, "data": text("hi")})
                    assert (await alice.push("message"))["data"]["payload"]["content"] == "hi"
                    # What the nodes tell of each other is where they listen.
                    stats = await alice.ok("cluster.stats", {})
                    urls = {n["name"]: n["url"] for n in stats["nodes"]}
                    assert urls == {
                        name: f"ws://{host}:{ports[name]}/ws" for name, host in HOSTS.items()
                    }
                # Every bus connection went where it was told to, through the relays.
                assert all(r.connections >= 1 and r.seen for r in relays)
            finally:
                for proc in procs:
                    proc.kill()
                nursery.cancel_scope.cancel()

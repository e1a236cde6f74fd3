"""The chaos suite: faults under continuous traffic, on a real cluster (a broker and three node
processes), with clients that resume (the Trio client, every node's URL).

Each test runs light traffic (every user sends a room message every 50 ms and a direct message
every 200 ms; all are in one room), injects one fault, lets the cluster recover, stops the
traffic and checks what docs/sessions.md and docs/cluster.md promise:

* every acknowledged message reached every recipient (room: every member; direct: the
  addressee), once (nothing twice, whether acknowledged or not), each room's in one order;
* every reconnect resumed its session;
* no wrong presence push: nobody is told that a user left who did not (the users of a node that
  was killed or stopped did leave, for the others, until they resumed elsewhere);
* it all converged within a bound after the fault ended.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from roomd.client import Backoff, Client, Lifecycle, Opened
from roomd.io import make_keys
from roomd.protocol import Push
from tests.cluster_support import (
    ClusterHandle,
    Proc,
    free_ports,
    metrics,
    running_cluster,
)

pytestmark = pytest.mark.cluster

NODES = ("nodeA", "nodeB", "nodeC")
ROOM_EVERY = 0.05
DM_EVERY = 0.2
CONVERGE = 15.0  # seconds the cluster gets to deliver everything once the traffic stops


class Progress:
    """Wakes whoever waits each time any member receives something."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def bump(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


PROGRESS = Progress()


@attrs.define
class Member:
    name: str
    home: str
    client: Client
    room: list[Push] = attrs.field(factory=list)  # room messages received
    dms: list[Push] = attrs.field(factory=list)
    left: list[str] = attrs.field(factory=list)  # users it was told left the room
    acked_room: list[str] = attrs.field(factory=list)  # what it sent and was acknowledged
    acked_dm: list[tuple[str, str]] = attrs.field(factory=list)  # (to, text)
    opens: list[Opened] = attrs.field(factory=list)  # its reconnects


@asynccontextmanager
async def traffic(cluster: ClusterHandle) -> AsyncIterator[tuple[list[Member], trio.Event]]:
    """Two users per node, all in room "r", sending until the event is set."""
    urls = {n: f"ws://127.0.0.1:{cluster.ports[n]}" for n in NODES}
    stop = trio.Event()
    members: list[Member] = []
    async with trio.open_nursery() as nursery:
        for i, home in enumerate(NODES * 2):
            others = [urls[n] for n in NODES if n != home]
            client = Client(
                urls[home],
                urls=others,
                user=f"u{i}",
                backoff=Backoff(0.05, 0.5),
                call_timeout=20,
                heartbeat_interval=1.0,
                heartbeat_timeout=2.0,
            )
            await nursery.start(client.run)
            members.append(Member(f"u{i}", home, client))
        for member in members:
            await member.client.join("r")
            nursery.start_soon(_receive, member)
            member.client.on(Lifecycle.OPEN, member.opens.append)
        await trio.sleep(0.5)  # every join known everywhere
        for index, member in enumerate(members):
            peer = members[(index + 1) % len(members)]
            nursery.start_soon(_send_room, member, stop)
            nursery.start_soon(_send_dms, member, peer.name, stop)
        yield members, stop
        stop.set()
        await trio.sleep(0.5)
        for member in members:
            await member.client.aclose()
        nursery.cancel_scope.cancel()


async def _receive(member: Member) -> None:
    with member.client.subscribe("*", size=100_000) as pushes:
        async for push in pushes:
            if push.event == "message" and push.room is not None:
                member.room.append(push)
            elif push.event == "message":
                member.dms.append(push)
            elif push.event == "room.left":
                member.left.append(push.data["user"])
            PROGRESS.bump()


async def _send_room(member: Member, stop: trio.Event) -> None:
    i = 0
    while not stop.is_set():
        text = f"{member.name}:{i}"
        i += 1
        try:
            await member.client.send_text(text, room="r")
        except Exception:
            pass  # not acknowledged: it may arrive or not, but never twice
        else:
            member.acked_room.append(text)
        await trio.sleep(ROOM_EVERY)


async def _send_dms(member: Member, peer: str, stop: trio.Event) -> None:
    i = 0
    while not stop.is_set():
        text = f"{member.name}>{peer}:{i}"
        i += 1
        try:
            await member.client.send_text(text, user=peer)
        except Exception:
            pass
        else:
            member.acked_dm.append((peer, text))
        await trio.sleep(DM_EVERY)


def _content(push: Push) -> str:
    return str(push.data["payload"]["content"])


async def check(members: list[Member], allowed_to_leave: set[str]) -> float:
    """Wait until every acknowledged message arrived; check once, one order, presence. The
    seconds it took."""
    start = trio.current_time()
    acked_room = {text for m in members for text in m.acked_room}
    expected_dms = {
        m.name: {t for s in members for to, t in s.acked_dm if to == m.name} for m in members
    }

    def complete() -> bool:
        return all(
            acked_room <= {_content(p) for p in m.room}
            and expected_dms[m.name] <= {_content(p) for p in m.dms}
            for m in members
        )

    with trio.move_on_after(CONVERGE):
        while not complete():
            await PROGRESS.wait()
    took = trio.current_time() - start
    for member in members:
        room = [_content(p) for p in member.room]
        missing = acked_room - set(room)
        assert not missing, f"{member.name} lacks {len(missing)} acked: {sorted(missing)[:5]}"
        twice = sorted(
            (_content(p), p.epoch, p.offset, p.seq)
            for p in member.room
            if room.count(_content(p)) > 1
        )
        assert not twice, f"{member.name} got room messages twice: {twice[:6]}"
        dms = [_content(p) for p in member.dms]
        lacking = sorted(expected_dms[member.name] - set(dms))
        assert not lacking, f"{member.name} lacks direct messages: {lacking[:8]} of {len(dms)}"
        assert len(dms) == len(set(dms)), f"{member.name} got direct messages twice"
        refused = [(o.node, o.reason) for o in member.opens if not o.resumed]
        assert not refused, f"{member.name}'s session was not resumed: {refused}"
        wrong = set(member.left) - allowed_to_leave
        assert not wrong, f"{member.name} was told {sorted(wrong)} left"
    # One order: any two members agree on the order of the messages both received.
    orders = [[_content(p) for p in m.room] for m in members]
    reference = {text: i for i, text in enumerate(max(orders, key=len))}
    for order in orders:
        ranks = [reference[t] for t in order if t in reference]
        assert ranks == sorted(ranks), "members saw the room's messages in different orders"
    return took


async def _fault_then_check(
    tmp_path: Path,
    fault: Callable[[ClusterHandle], Awaitable[set[str]]],
    bound: float,
    brokers: int = 1,
    sharded: bool = False,
) -> ClusterHandle:
    with trio.fail_after(90):
        async with running_cluster(tmp_path, brokers=brokers, sharded=sharded) as cluster:
            async with traffic(cluster) as (members, stop):
                await trio.sleep(1.0)
                homes = {m.name: m.home for m in members}
                stopped_nodes = await fault(cluster)
                await trio.sleep(1.5)  # traffic through the recovery
                stop.set()
                allowed = {user for user, home in homes.items() if home in stopped_nodes}
                try:
                    took = await check(members, allowed)
                except AssertionError:
                    _print_logs(cluster)  # (pytest shows them with the failure)
                    raise
                assert sum(len(m.acked_room) for m in members) > 50
                for name in set(NODES) - stopped_nodes:  # no node skipped a hole it could not fill
                    samples = await trio.to_thread.run_sync(metrics, cluster.ports[name])
                    assert samples["roomd_stream_lost_total"] == 0, name
                print(f"converged {took:.2f} s after the traffic stopped")
                assert took <= bound
    return cluster


def _print_logs(cluster: ClusterHandle) -> None:
    """What the nodes logged above DEBUG: how the cluster saw the fault."""
    for name, proc in cluster.nodes.items():
        for line in proc.lines:
            if " DEBUG " not in line:
                print(f"{name}| {line}")


def _signal(cluster: ClusterHandle, name: str, signum: int) -> None:
    process = (cluster.broker if name == "broker" else cluster.nodes[name]).process
    assert process is not None
    os.kill(process.pid, signum)


async def test_a_node_killed(tmp_path: Path) -> None:
    async def fault(cluster: ClusterHandle) -> set[str]:
        cluster.nodes["nodeC"].kill()
        return {"nodeC"}

    await _fault_then_check(tmp_path, fault, bound=10)


async def test_a_node_stopped_gracefully(tmp_path: Path) -> None:
    async def fault(cluster: ClusterHandle) -> set[str]:
        assert await cluster.nodes["nodeC"].stop() == 0
        return {"nodeC"}

    await _fault_then_check(tmp_path, fault, bound=10)


async def test_a_node_frozen_then_woken(tmp_path: Path) -> None:
    async def fault(cluster: ClusterHandle) -> set[str]:
        _signal(cluster, "nodeC", signal.SIGSTOP)
        await trio.sleep(4.0)  # longer than the broker keeps a silent node's subscriptions
        _signal(cluster, "nodeC", signal.SIGCONT)
        return {"nodeC"}  # the others could not tell it from a crash meanwhile

    await _fault_then_check(tmp_path, fault, bound=10)


async def test_the_broker_frozen(tmp_path: Path) -> None:
    async def fault(cluster: ClusterHandle) -> set[str]:
        _signal(cluster, "broker", signal.SIGSTOP)
        await trio.sleep(3.0)
        _signal(cluster, "broker", signal.SIGCONT)
        return set()  # nobody left: no node may tell its clients otherwise

    await _fault_then_check(tmp_path, fault, bound=10)


async def test_the_broker_killed_and_restarted(tmp_path: Path) -> None:
    async def fault(cluster: ClusterHandle) -> set[str]:
        assert cluster.broker is not None and cluster.broker.process is not None
        cluster.broker.kill()
        await cluster.broker.process.wait()
        await trio.sleep(2.0)
        await cluster.restart_broker()
        return set()

    await _fault_then_check(tmp_path, fault, bound=10)


async def test_one_of_two_brokers_killed_then_back(tmp_path: Path) -> None:
    """docs/cluster.md: with two brokers, killing one loses nothing and nobody notices beyond a
    log line and a metric; it rejoins when it is back."""
    marks: dict[str, int] = {}

    async def fault(cluster: ClusterHandle) -> set[str]:
        b1 = cluster.brokers["b1"]
        marks.update({name: len(proc.lines) for name, proc in cluster.nodes.items()})
        b1.kill()
        assert b1.process is not None
        await b1.process.wait()
        for proc in cluster.nodes.values():
            await proc.wait_for(r"broker b1 is down .*; 1 of 2 brokers live", marks[proc.name])
        samples = await trio.to_thread.run_sync(metrics, cluster.ports["nodeA"])
        assert samples["roomd_bus_brokers_live"] == 1
        assert samples["roomd_bus_broker_outages_total"] == 1
        await trio.sleep(1.0)  # traffic through one broker
        await cluster.restart_broker("b1")
        for proc in cluster.nodes.values():
            await proc.wait_for(r"broker b1 is live; 2 of 2 brokers live", marks[proc.name])
        return set()  # nobody left: no node may tell its clients otherwise

    cluster = await _fault_then_check(tmp_path, fault, bound=3, brokers=2)
    for name, proc in cluster.nodes.items():
        after = proc.lines[marks[name] :]
        # The bus never went down, so nothing was held, caught up or resent.
        assert not [line for line in after if "bus is down" in line or "frozen" in line], name


async def test_a_node_with_an_unknown_key(tmp_path: Path) -> None:
    """docs/cluster.md: a node whose key the broker does not trust can neither publish nor
    subscribe; the cluster goes on as if it were not there."""
    intruder: list[Proc] = []

    async def fault(cluster: ClusterHandle) -> set[str]:
        elsewhere = tmp_path / "elsewhere"
        make_keys(elsewhere, ["nodeX"])
        shutil.copy(tmp_path / "keys" / "broker.key", elsewhere)
        (port,) = free_ports(1)
        argv = [sys.executable, "-m", "roomd.cli", "--name", "nodeX", "--port", str(port)]
        argv += ["--config", str(cluster.config_path), "--keys", str(elsewhere)]
        intruder.append(Proc("nodeX", argv))
        await intruder[0].start(cluster.nursery)
        await intruder[0].wait_for("refused this node's key")
        stats = await cluster.broker_stats()
        assert stats.auth.publishers_refused + stats.auth.subscribers_refused >= 1
        return set()

    cluster = await _fault_then_check(tmp_path, fault, bound=3)
    intruder[0].kill()
    for proc in cluster.nodes.values():
        assert not [line for line in proc.lines if "nodeX" in line], proc.name


async def test_a_shard_broker_killed_and_restarted(tmp_path: Path) -> None:
    """docs/cluster.md: brokers in two shards, one broker each; the broker of one shard is
    killed and restarted. The topics it carried have no way through meanwhile: every node's bus
    is down, as with a lone broker's restart, and the same promises hold."""
    marks: dict[str, int] = {}

    async def fault(cluster: ClusterHandle) -> set[str]:
        marks.update({name: len(proc.lines) for name, proc in cluster.nodes.items()})
        b2 = cluster.brokers["b2"]
        b2.kill()
        assert b2.process is not None
        await b2.process.wait()
        for proc in cluster.nodes.values():
            await proc.wait_for("bus is down", marks[proc.name])
        await trio.sleep(1.0)
        await cluster.restart_broker("b2")
        for proc in cluster.nodes.values():
            await proc.wait_for("bus is live", marks[proc.name])
        return set()

    await _fault_then_check(tmp_path, fault, bound=10, brokers=2, sharded=True)

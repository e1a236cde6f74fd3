"""Two brokers, as replicas or as shards (real broker processes, the buses of two nodes embedded
here). Replicas: a node's bus publishes through both and subscribes through both, and keeps
every message once while either broker is killed and comes back. Shards: each topic goes through
the broker of its shard only."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from broker import broker_stats
from roomd.cluster import Bus, _wire
from roomd.cluster._bus import Remote
from roomd.io import Flusher, read_keypair, read_public_key
from tests.cluster_support import Proc, cluster_keys, free_ports
from tests.support import wait_until

pytestmark = pytest.mark.cluster

TOPIC = _wire.room_topic("/", "pair")
EPOCH = 77
LIVENESS = 0.6  # seconds: a broker none of a node's probes came back through is down


@asynccontextmanager
async def brokers(
    keys: Path, names: list[str], sharded: bool = False
) -> AsyncIterator[dict[str, tuple[Proc, Remote, str]]]:
    """Broker processes (replicas, or each its own shard), with a control endpoint each."""
    found: dict[str, tuple[Proc, Remote, str]] = {}
    async with trio.open_nursery() as nursery:
        for shard, name in enumerate(names):
            front, back, control = (f"tcp://127.0.0.1:{p}" for p in free_ports(3))
            argv = [sys.executable, "-m", "broker", "--frontend", front, "--backend", back]
            argv += ["--keys", str(keys), "--name", name, "--stats-interval", "0"]
            proc = Proc(name, [*argv, "--control", control])
            await proc.start(nursery)
            await proc.wait_for(r'^\{"frontend"')
            key = read_public_key(keys / f"{name}.key")
            remote = Remote(name, back, front, key, shard if sharded else 0)
            found[name] = (proc, remote, control)
        try:
            yield found
        finally:
            for proc, _, _ in found.values():
                proc.kill()
            nursery.cancel_scope.cancel()


async def ignore(batch: list[bytes]) -> None:
    """A bus's handler that reads nothing (the publishing side's)."""


def message(seq: int) -> bytes:
    return _wire.encode(TOPIC, _wire.Kind.ROOM, "nodeA", EPOCH, seq, [b"%d" % seq, False, None])


async def test_killing_either_of_two_brokers_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roomd.bus")
    keys = cluster_keys(tmp_path / "keys", ["b1", "b2", "nodeA", "nodeB"])
    received: list[int] = []
    arrived = trio.Event()

    async def on_batch(batch: list[bytes]) -> None:
        nonlocal arrived
        for raw in batch:
            for envelope in _wire.decode_all(raw):
                if envelope.node == "nodeA" and envelope.topic == TOPIC:
                    received.append(envelope.seq)
        arrived.set()
        arrived = trio.Event()

    with trio.fail_after(40):
        async with brokers(keys, ["b1", "b2"]) as running, trio.open_nursery() as nursery:
            flusher = Flusher()
            nursery.start_soon(flusher.run)
            remotes = [remote for _, remote, _ in running.values()]
            buses = {
                name: Bus(
                    name,
                    flusher=flusher,
                    mode="broker",
                    on_batch=on_batch if name == "nodeB" else ignore,
                    remotes=remotes,
                    keys=read_keypair(keys / f"{name}.key_secret"),
                    liveness=LIVENESS,
                )
                for name in ("nodeA", "nodeB")
            }
            for bus in buses.values():
                await nursery.start(bus.run)
            a, b = buses["nodeA"], buses["nodeB"]
            b.subscribe(TOPIC)
            seq = 0

            async def publish(count: int) -> None:
                """``count`` messages at about 2,000/s, in rounds of 10."""
                nonlocal seq
                for _ in range(count // 10):
                    for _ in range(10):
                        seq += 1
                        a.publish(message(seq))
                    await trio.sleep(0.005)

            async def settle() -> None:
                """Until a fresh message came through (both brokers' copies drained)."""
                nonlocal seq
                while True:
                    seq += 1
                    a.publish(message(seq))
                    mark = seq
                    with trio.move_on_after(0.05):
                        while mark not in received:
                            await arrived.wait()
                    if mark in received:
                        await trio.sleep(0.1)  # its second copy, and stragglers
                        return

            async def down(name: str) -> None:
                proc = running[name][0]
                proc.kill()
                assert proc.process is not None
                await proc.process.wait()

            await settle()  # subscriptions live through both brokers
            await wait_until(lambda: a.paths_live() == b.paths_live() == 2, 5)
            received.clear()
            start = seq + 1
            await publish(400)
            await down("b1")
            await publish(1000)
            # (noticed within LIVENESS and a probe interval)
            await wait_until(lambda: a.paths_live() == b.paths_live() == 1, 5)
            assert a.outages == b.outages == 1

            await running["b1"][0].start(nursery)  # same endpoints: it rejoins
            await wait_until(lambda: a.paths_live() == b.paths_live() == 2, 10)
            await publish(400)
            await settle()
            await down("b2")  # now only the broker that came back carries it
            await publish(1000)
            await settle()
            await wait_until(lambda: a.paths_live() == b.paths_live() == 1, 5)

            expected = list(range(start, seq + 1))
            assert sorted(received) == expected, f"lost {sorted(set(expected) - set(received))}"
            assert len(received) == len(set(received))  # each once
            assert b.duplicates > 0  # the copies were there, and dropped
            details = b.details()
            assert details["brokers"] == [
                {"name": "b1", "live": True},
                {"name": "b2", "live": False},
            ]
            assert details["outages"] == 2
            nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert any("nodeB: broker b1 is down" in m and "1 of 2 brokers live" in m for m in messages)
    assert any("nodeB: broker b1 is live; 2 of 2 brokers live" in m for m in messages)
    assert any("nodeA: broker b2 is down" in m for m in messages)


def topic_in(shard: int, name: str) -> bytes:
    """A room topic that the stable hash puts in ``shard`` (of two)."""
    for i in range(100):
        topic = _wire.room_topic("/", f"{name}{i}")
        if _wire.shard_of(topic, 2) == shard:
            return topic
    raise AssertionError("no topic")


def test_topics_are_spread_over_shards_the_same_way_everywhere() -> None:
    topics = [_wire.room_topic("/", f"room{i}") for i in range(1000)]
    counts = [sum(_wire.shard_of(t, 2) == s for t in topics) for s in (0, 1)]
    assert 400 < counts[0] < 600 and sum(counts) == 1000
    assert _wire.shard_of(_wire.room_topic("/", "lobby"), 2) == 0  # CRC-32: stable everywhere
    assert [_wire.shard_of(_wire.probe_topic("nodeA", s), 3) for s in range(3)] == [0, 1, 2]
    assert all(_wire.shard_of(t, 1) == 0 for t in topics[:10])


async def test_each_topic_goes_through_the_broker_of_its_shard(tmp_path: Path) -> None:
    keys = cluster_keys(tmp_path / "keys", ["s0", "s1", "nodeA", "nodeB"])
    x, y = topic_in(0, "x"), topic_in(1, "y")
    got: dict[bytes, int] = {x: 0, y: 0}
    arrived = trio.Event()

    async def on_batch(batch: list[bytes]) -> None:
        nonlocal arrived
        for raw in batch:
            for envelope in _wire.decode_all(raw):
                if envelope.topic in got:
                    got[envelope.topic] += 1
        arrived.set()
        arrived = trio.Event()

    with trio.fail_after(30):
        async with (
            brokers(keys, ["s0", "s1"], sharded=True) as running,
            trio.open_nursery() as nursery,
        ):
            flusher = Flusher()
            nursery.start_soon(flusher.run)
            remotes = [remote for _, remote, _ in running.values()]
            a, b = (
                Bus(
                    name,
                    flusher=flusher,
                    mode="broker",
                    on_batch=on_batch if name == "nodeB" else ignore,
                    remotes=remotes,
                    keys=read_keypair(keys / f"{name}.key_secret"),
                    liveness=LIVENESS,
                )
                for name in ("nodeA", "nodeB")
            )
            for bus in (a, b):
                await nursery.start(bus.run)
                await bus.wait_ready()  # its probes came back through both shards
                assert bus.complete() and bus.shards == 2
            b.subscribe(x)
            b.subscribe(y)

            async def stats(name: str) -> int:
                control = running[name][2]
                found = await trio.to_thread.run_sync(broker_stats, control, 2.0)
                return found.frontend.messages_in

            async def send(topic: bytes, count: int, counted: bool = True) -> None:
                """``count`` messages on ``topic``, once ``b``'s subscription took effect; the
                brokers' counts say which carried them (if ``counted``)."""
                seq = 0
                while got[topic] == 0:  # the slow joiner: until one came through
                    seq += 1
                    a.publish(_wire.encode(topic, "room", "nodeA", EPOCH, seq, [b"", False, None]))
                    with trio.move_on_after(0.02):
                        await arrived.wait()
                got[topic] = 0
                before = {name: await stats(name) for name in running} if counted else {}
                large = b"x" * _wire.MAX_BATCHED  # (each its own ZeroMQ message: counted exactly)
                for _ in range(count):
                    seq += 1
                    body = [large, False, None]
                    a.publish(_wire.encode(topic, "room", "nodeA", EPOCH, seq, body))
                while got[topic] < count:
                    await arrived.wait()
                if not counted:
                    return
                after = {name: await stats(name) for name in running}
                carried = {name: after[name] - before[name] for name in running}
                mine, other = ("s0", "s1") if topic == x else ("s1", "s0")
                assert count <= carried[mine] < count + 100, carried  # (+ probes, heartbeats)
                assert carried[other] < 100, carried

            await send(x, 2000)
            await send(y, 1500)

            # A shard's broker gone: its topics have no way through; the others still do.
            proc = running["s1"][0]
            proc.kill()
            assert proc.process is not None
            await proc.process.wait()
            await wait_until(lambda: not a.complete() and not b.complete(), 5)
            assert a.paths_live() == b.paths_live() == 1
            await send(x, 100, counted=False)
            await proc.start(nursery)
            await wait_until(lambda: a.complete() and b.complete(), 10)
            await send(y, 100)
            nursery.cancel_scope.cancel()

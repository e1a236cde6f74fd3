"""Two brokers: a node's bus publishes through both and subscribes through both, and keeps every
message once while either broker is killed and comes back (real broker processes, the buses of
two nodes embedded here)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

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
async def brokers(keys: Path, names: list[str]) -> AsyncIterator[dict[str, tuple[Proc, Remote]]]:
    found: dict[str, tuple[Proc, Remote]] = {}
    async with trio.open_nursery() as nursery:
        for name in names:
            front, back = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
            argv = [sys.executable, "-m", "broker", "--frontend", front, "--backend", back]
            argv += ["--keys", str(keys), "--name", name, "--stats-interval", "0"]
            proc = Proc(name, argv)
            await proc.start(nursery)
            await proc.wait_for(r'^\{"frontend"')
            key = read_public_key(keys / f"{name}.key")
            found[name] = (proc, Remote(name, back, front, key))
        try:
            yield found
        finally:
            for proc, _ in found.values():
                proc.kill()
            nursery.cancel_scope.cancel()


def message(seq: int) -> bytes:
    return _wire.encode(TOPIC, _wire.Kind.ROOM, "nodeA", EPOCH, seq, [b"%d" % seq, False, None])


async def test_killing_either_of_two_brokers_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roomd.bus")
    keys = cluster_keys(tmp_path / "keys", ["b1", "b2", "nodeA", "nodeB"])
    received: list[int] = []
    arrived = trio.Event()

    def on_batch(batch: list[bytes]) -> None:
        nonlocal arrived
        for raw in batch:
            envelope = _wire.decode(raw)
            if envelope.node == "nodeA" and envelope.topic == TOPIC:
                received.append(envelope.seq)
        arrived.set()
        arrived = trio.Event()

    with trio.fail_after(40):
        async with brokers(keys, ["b1", "b2"]) as running, trio.open_nursery() as nursery:
            flusher = Flusher()
            nursery.start_soon(flusher.run)
            remotes = [remote for _, remote in running.values()]
            buses = {
                name: Bus(
                    name,
                    flusher=flusher,
                    mode="broker",
                    on_batch=on_batch if name == "nodeB" else lambda batch: None,
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
            await publish(1000)  # the outage is noticed within LIVENESS meanwhile
            assert a.paths_live() == b.paths_live() == 1
            assert a.outages == b.outages == 1

            await running["b1"][0].start(nursery)  # same endpoints: it rejoins
            await wait_until(lambda: a.paths_live() == b.paths_live() == 2, 10)
            await publish(400)
            await settle()
            await down("b2")  # now only the broker that came back carries it
            await publish(1000)
            await settle()

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

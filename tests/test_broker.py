"""Tests for broker/: a real ``python -m broker`` process, with roomd.io._zmq sockets as nodes."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import zmq

from broker import (
    AuthStats,
    Broker,
    BrokerStats,
    ConfigError,
    broker_stats,
    default_keys,
    parse_settings,
)
from roomd.io import make_keys, read_keypair, read_public_key, write_keypair
from roomd.io._zmq import (
    Handshake,
    SocketType,
    ZmqSocket,
    curve_keypair,
    make_context,
    open_monitor,
    open_socket,
)
from tests.support import wait_until

Context = zmq.Context[zmq.Socket[bytes]]
ANY_PORT = "tcp://127.0.0.1:*"


@pytest.fixture
def ctx() -> Iterator[Context]:
    with make_context() as context:
        yield context


@attrs.frozen
class RunningBroker:
    process: trio.Process
    frontend: str
    backend: str
    control: str

    async def stats(self) -> BrokerStats:
        return await trio.to_thread.run_sync(broker_stats, self.control, 2.0)


@asynccontextmanager
async def broker_process(
    frontend: str = ANY_PORT,
    backend: str = ANY_PORT,
    control: str = ANY_PORT,
    security: tuple[str, ...] = ("--insecure",),
) -> AsyncIterator[RunningBroker]:
    """Run ``python -m broker`` until the block exits; it is killed in any case (insecure
    unless ``security`` says otherwise, e.g. ``("--keys", DIR)``)."""
    args = ["--frontend", frontend, "--backend", backend, "--control", control]
    args += ["--stats-interval", "0", "--log-level", "WARNING", *security]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "broker", *args], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "the broker exited before it was ready"
            line += chunk
        endpoints = json.loads(line)
        yield RunningBroker(
            process, endpoints["frontend"], endpoints["backend"], endpoints["control"]
        )
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


_syncs = itertools.count()


async def wait_for_flow(pub: ZmqSocket, routes: list[tuple[ZmqSocket, bytes]]) -> None:
    """Probe each (subscriber, topic) until messages flow, then sync so no probe is in flight.

    Deals with the slow joiner: a subscription takes a while to reach the publisher through the
    broker, and what is published before that is dropped.
    """
    for sub, topic in routes:
        for _ in range(500):
            pub.send_nowait(topic + b" probe")
            with trio.move_on_after(0.01):
                assert (await sub.receive()).startswith(topic + b" probe")
                break
        else:
            pytest.fail(f"no flow on {topic!r}")
        sync = topic + b" sync %d" % next(_syncs)  # unique: sockets may share a topic
        await pub.send(sync)
        await receive_until(sub, sync)


async def receive_until(sub: ZmqSocket, marker: bytes) -> list[bytes]:
    """Messages received before *marker* (probes and syncs left out)."""
    received: list[bytes] = []
    while True:
        for msg in await sub.receive_batch():
            if msg == marker:
                return received
            if not msg.endswith(b" probe") and b" sync " not in msg:
                received.append(msg)


async def test_routing_is_interest_based_and_counted(ctx: Context) -> None:
    with trio.fail_after(10):
        async with (
            broker_process() as b,
            open_socket(ctx, SocketType.PUB) as pub,
            open_socket(ctx, SocketType.SUB) as sub_a,
            open_socket(ctx, SocketType.SUB) as sub_b,
        ):
            sub_a.subscribe(b"r:a")
            sub_b.subscribe(b"r:b")
            for sub in (sub_a, sub_b):
                sub.connect(b.backend)
            pub.connect(b.frontend)
            await wait_for_flow(pub, [(sub_a, b"r:a"), (sub_b, b"r:b")])
            before = await b.stats()

            sent: dict[bytes, list[bytes]] = {b"r:a": [], b"r:b": [], b"r:c": []}
            for i in range(100):
                for topic, messages in sent.items():
                    messages.append(topic + b" %d" % i)
                    await pub.send(messages[-1])
            await pub.send(b"r:a end")
            await pub.send(b"r:b end")
            assert await receive_until(sub_a, b"r:a end") == sent[b"r:a"]
            assert await receive_until(sub_b, b"r:b end") == sent[b"r:b"]

            delta = await b.stats() - before
            # r:c interests nobody: the publisher never even sent it to the broker.
            forwarded = [*sent[b"r:a"], *sent[b"r:b"], b"r:a end", b"r:b end"]
            assert delta.frontend.messages_in == len(forwarded)
            assert delta.frontend.bytes_in == sum(map(len, forwarded))
            assert delta.backend.messages_out == len(forwarded)
            assert delta.backend.messages_in == 0  # no new subscriptions
            assert delta.uptime > 0


async def test_unsubscribe_is_forwarded_when_the_last_subscriber_leaves(ctx: Context) -> None:
    with trio.fail_after(10):
        async with (
            broker_process() as b,
            # An XPUB publisher sees the subscriptions the broker forwards upstream.
            open_socket(ctx, SocketType.XPUB) as pub,
            open_socket(ctx, SocketType.SUB) as s1,
            open_socket(ctx, SocketType.SUB) as s2,
            open_socket(ctx, SocketType.SUB) as marker,
        ):
            for sub, topic in ((s1, b"r:a"), (s2, b"r:a"), (marker, b"r:m")):
                sub.subscribe(topic)
                sub.connect(b.backend)
            pub.connect(b.frontend)
            # Two subscribers to r:a, but the broker forwards the subscription once.
            assert sorted([await pub.receive(), await pub.receive()]) == [b"\x01r:a", b"\x01r:m"]
            await wait_for_flow(pub, [(s1, b"r:a"), (s2, b"r:a"), (marker, b"r:m")])

            s1.unsubscribe(b"r:a")
            s1.subscribe(b"r:z")  # travels behind the unsubscribe, on the same connection
            assert await pub.receive() == b"\x01r:z"  # no "\x00r:a": s2 still wants r:a
            await pub.send(b"r:a still")
            assert await receive_until(s2, b"r:a still") == []

            s2.unsubscribe(b"r:a")
            assert await pub.receive() == b"\x00r:a"
            before = await b.stats()
            for i in range(50):
                await pub.send(b"r:a %d" % i)  # filtered out by the publisher itself
            await pub.send(b"r:m end")
            assert await receive_until(marker, b"r:m end") == []
            delta = await b.stats() - before
            assert delta.frontend.messages_in == 1


async def test_control_endpoint(ctx: Context) -> None:
    with trio.fail_after(10):
        async with broker_process() as b, open_socket(ctx, SocketType.REQ) as req:
            req.connect(b.control)
            await req.send(b"TERMINATE")  # not accepted over the network
            assert json.loads(await req.receive()) == {"error": "unknown command"}
            await req.send(b"STATISTICS")
            stats = BrokerStats.from_json(await req.receive())
            assert stats.published == stats.forwarded == 0
            assert b.process.returncode is None
        with pytest.raises(TimeoutError):
            await trio.to_thread.run_sync(broker_stats, "tcp://127.0.0.1:1", 0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_the_broker_cleanly(ctx: Context, signum: signal.Signals) -> None:
    with trio.fail_after(10):
        async with (
            broker_process() as b,
            open_socket(ctx, SocketType.PUB) as pub,
            open_socket(ctx, SocketType.SUB) as sub,
        ):
            sub.subscribe(b"r:a")
            sub.connect(b.backend)
            pub.connect(b.frontend)
            await wait_for_flow(pub, [(sub, b"r:a")])
            b.process.send_signal(signum)
            with trio.fail_after(1):
                assert await b.process.wait() == 0


async def test_clients_survive_a_broker_restart(ctx: Context) -> None:
    outage_count = 200
    with trio.fail_after(15):
        async with (
            open_socket(ctx, SocketType.PUB) as pub,
            open_socket(ctx, SocketType.SUB) as sub,
        ):
            sub.subscribe(b"r:a")
            async with broker_process() as first:
                sub.connect(first.backend)
                pub.connect(first.frontend)
                await wait_for_flow(pub, [(sub, b"r:a")])
                first.process.kill()
                await first.process.wait()

            received: list[bytes] = []
            some_arrived, end_arrived = trio.Event(), trio.Event()

            async def collect() -> None:  # keeps the SUB serviced, so that it resubscribes
                while True:
                    batch = await sub.receive_batch()
                    received.extend(batch)
                    some_arrived.set()
                    if b"r:a end" in batch:
                        end_arrived.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                for i in range(outage_count):
                    await pub.send(b"r:a outage %d" % i)
                # Same endpoints; the sockets reconnect by themselves.
                async with broker_process(first.frontend, first.backend, first.control) as second:
                    # A steady publisher: until its subscriber is known again, messages are lost.
                    for i in range(2_000):
                        await pub.send(b"r:a after %d" % i)
                        with trio.move_on_after(0.005):
                            await some_arrived.wait()
                            break
                    else:
                        pytest.fail("no message arrived after the restart")
                    after = [b"r:a more %d" % i for i in range(1_000)]
                    for msg in after:
                        await pub.send(msg)
                    await pub.send(b"r:a end")
                    await end_arrived.wait()
                    assert (await second.stats()).published >= len(after) + 1
                nursery.cancel_scope.cancel()

            assert [m for m in received if m.startswith(b"r:a more")] == after
            outage_lost = outage_count - sum(m.startswith(b"r:a outage") for m in received)
            after_lost = i + 1 - sum(m.startswith(b"r:a after") for m in received)
            print(
                f"broker restart: lost {outage_lost} of {outage_count} messages sent while it was"
                f" down, and {after_lost} of {i + 1} sent after it was restarted"
            )


def test_embedded_broker_stop_and_stats(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    b = Broker(ANY_PORT, ANY_PORT, stats_interval=0.05)
    endpoints = b.bind()
    with pytest.raises(RuntimeError):
        b.stats()  # not running yet

    async def exercise() -> BrokerStats:
        with trio.fail_after(10), make_context() as ctx:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, b.run)
                try:
                    await use_broker(ctx)
                finally:
                    b.stop()  # the thread cannot be cancelled: it must return
            return b.stats()

    async def use_broker(ctx: Context) -> None:
        async with (
            open_socket(ctx, SocketType.PUB) as pub,
            open_socket(ctx, SocketType.SUB) as sub,
        ):
            sub.subscribe(b"r:a")
            sub.connect(endpoints.backend)
            pub.connect(endpoints.frontend)
            await wait_for_flow(pub, [(sub, b"r:a")])
            live = await trio.to_thread.run_sync(b.stats)
            assert live.published == live.forwarded >= 2
            # Until a periodic statistics line is logged (every 0.05 s).
            await wait_until(lambda: any("last 0.05 s: in " in m for m in caplog.messages))

    final = trio.run(exercise)
    assert final.published >= 2
    assert b.stats() is final
    with pytest.raises(RuntimeError):
        b.run()  # a broker runs once
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("last 0.05 s: in ") for m in messages)
    assert any(m.startswith(f"totals: in {final.published} msgs") for m in messages)


async def test_bind_conflict(ctx: Context) -> None:
    with trio.fail_after(10):
        holder = ctx.socket(zmq.PUB)
        taken = f"tcp://127.0.0.1:{holder.bind_to_random_port('tcp://127.0.0.1')}"
        with pytest.raises(zmq.ZMQError):
            Broker(taken, ANY_PORT).bind()
        command = [sys.executable, "-m", "broker", "--frontend", taken, "--insecure"]
        command += ["--log-level", "CRITICAL"]
        result = await trio.run_process(command, check=False)
        assert result.returncode == 2
        holder.close()


def test_settings_from_toml_and_cli(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\nfrontend = "tcp://127.0.0.1:6000"\nstats-interval = 5\nlog_level = "DEBUG"\n'
    )
    settings = parse_settings(["--config", str(config), "--frontend", "tcp://127.0.0.1:7000"])
    assert settings.frontend == "tcp://127.0.0.1:7000"  # the CLI wins
    assert settings.backend == "tcp://127.0.0.1:5556"  # the default
    assert settings.stats_interval == 5.0
    assert settings.log_level == "DEBUG"
    assert settings.control is None
    assert (settings.name, settings.keys, settings.insecure) == ("broker", None, False)
    assert settings.key_directory() == default_keys()

    config.write_text('[broker]\nname = "b2"\nkeys = "/etc/roomd/keys"\ninsecure = true\n')
    settings = parse_settings(["--config", str(config), "--control", ""])
    assert (settings.name, settings.keys, settings.insecure) == ("b2", "/etc/roomd/keys", True)
    assert settings.control is None  # an empty endpoint turns it off
    assert parse_settings(["--insecure"]).insecure
    assert default_keys({"ROOMD_STATE_DIR": "/s"}) == Path("/s/keys")
    assert default_keys({"XDG_STATE_HOME": "/x"}) == Path("/x/roomd/keys")

    config.write_text("[broker]\nfrontnd = 'x'\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_settings(["--config", str(config)])
    config.write_text("[broker]\ninsecure = 1\n")
    with pytest.raises(ConfigError, match="wrong type"):
        parse_settings(["--config", str(config)])
    config.write_text("[broker]\nhwm = 'lots'\n")
    with pytest.raises(ConfigError, match="wrong type"):
        parse_settings(["--config", str(config)])
    with pytest.raises(ConfigError, match=">= 0"):
        parse_settings(["--stats-interval", "-1"])
    with pytest.raises(ConfigError, match="log level"):
        parse_settings(["--log-level", "LOUD"])
    with pytest.raises(ConfigError, match="cannot read"):
        parse_settings(["--config", str(tmp_path / "missing.toml")])


# CurveZMQ ----------------------------------------------------------------------------------


async def test_a_curve_broker_lets_in_trusted_keys_and_counts_the_others(
    ctx: Context, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    make_keys(keys, ["broker", "nodeA"])
    node = read_keypair(keys / "nodeA.key_secret")
    broker_key = read_public_key(keys / "broker.key")
    stranger = curve_keypair()  # a key the broker's directory does not hold
    with trio.fail_after(10):
        async with (
            broker_process(security=("--keys", str(keys))) as b,
            open_socket(ctx, SocketType.PUB, keys=node) as pub,
            open_socket(ctx, SocketType.SUB, keys=node) as sub,
            open_socket(ctx, SocketType.PUB, keys=stranger) as bad_pub,
            open_socket(ctx, SocketType.SUB, keys=stranger) as bad_sub,
        ):
            monitors = [open_monitor(ctx, s, "bad") for s in (bad_pub, bad_sub)]
            for s in (sub, bad_sub):
                s.subscribe(b"r:a")
            sub.connect(b.backend, broker_key)
            pub.connect(b.frontend, broker_key)
            bad_pub.connect(b.frontend, broker_key)
            bad_sub.connect(b.backend, broker_key)
            for monitor in monitors:
                assert (await monitor.next_event()).what == Handshake.REFUSED
                await monitor.aclose()
            await wait_for_flow(pub, [(sub, b"r:a")])  # a trusted node works as before
            for i in range(20):
                bad_pub.send_nowait(b"r:a forged %d" % i)  # (no connection takes them)
            await pub.send(b"r:a end")
            assert await receive_until(sub, b"r:a end") == []
            with trio.move_on_after(0.1):
                assert not await bad_sub.receive_batch()
            stats = await b.stats()
            assert stats.secure
            assert stats.auth == AuthStats(
                publishers_accepted=1,
                publishers_refused=1,
                subscribers_accepted=1,
                subscribers_refused=1,
            )

            # A key added to the directory is trusted from the next connection on.
            write_keypair(keys, "late", stranger)
            bad_sub.disconnect(b.backend)
            bad_sub.connect(b.backend, broker_key)
            await wait_for_flow(pub, [(bad_sub, b"r:a")])
            assert (await b.stats()).auth.subscribers_accepted == 2


async def test_a_broker_without_its_key_does_not_start(tmp_path: Path) -> None:
    with trio.fail_after(10):
        command = [sys.executable, "-m", "broker", "--keys", str(tmp_path), "--name", "b1"]
        result = await trio.run_process(command, check=False, capture_stderr=True)
        assert result.returncode == 2
        error = result.stderr.decode()
        assert f"{tmp_path}/b1.key_secret does not exist" in error
        assert f"roomd keys b1 --dir {tmp_path}" in error and "--insecure" in error
        make_keys(tmp_path, ["b1"])
        (tmp_path / "b1.key_secret").chmod(0o644)
        result = await trio.run_process(command, check=False, capture_stderr=True)
        assert result.returncode == 2
        assert "may be read by others" in result.stderr.decode()

"""Tests for roomd.io._zmq: the ZeroMQ-on-Trio adapter.

Everything goes over tcp://127.0.0.1 on ports the OS picks; the ZAP handler and socket monitors
are on inproc://, as libzmq wants them.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing
import zmq

from roomd.io._zmq import (
    DEFAULT_RCVHWM,
    DEFAULT_SNDHWM,
    KEEPALIVE_IDLE_S,
    RECONNECT_IVL_MAX_MS,
    Handshake,
    Keypair,
    SocketType,
    ZapRequest,
    ZmqSocket,
    curve_keypair,
    make_context,
    open_monitor,
    open_socket,
    serve_zap,
)
from tests.cluster_support import TcpRelay

Context = zmq.Context[zmq.Socket[bytes]]
ANY_PORT = "tcp://127.0.0.1:*"


@pytest.fixture
def ctx() -> Iterator[Context]:
    with make_context() as context:
        yield context


@asynccontextmanager
async def dealer_pair(
    ctx: Context, *, hwm: int = DEFAULT_SNDHWM
) -> AsyncIterator[tuple[ZmqSocket, ZmqSocket]]:
    """Two connected DEALERs; the connection is up (one message went each way) on entry."""
    async with (
        open_socket(ctx, SocketType.DEALER, sndhwm=hwm, rcvhwm=hwm) as a,
        open_socket(ctx, SocketType.DEALER, sndhwm=hwm, rcvhwm=hwm) as b,
    ):
        b.connect(a.bind(ANY_PORT))
        await b.send(b"hello")
        assert await a.receive() == b"hello"
        await a.send(b"hello")
        assert await b.receive() == b"hello"
        yield a, b


async def test_options_and_context_defaults(ctx: Context) -> None:
    with trio.fail_after(5):
        assert ctx.getsockopt(zmq.LINGER) == 0
        async with open_socket(ctx, SocketType.SUB) as sub:
            raw = sub._sock
            assert raw.getsockopt(zmq.LINGER) == 0
            assert raw.getsockopt(zmq.SNDHWM) == 0  # subscriptions must never be dropped
            assert raw.getsockopt(zmq.RCVHWM) == DEFAULT_RCVHWM
            assert raw.getsockopt(zmq.HEARTBEAT_IVL) == 0  # never: see test_a_stalled_...
            assert raw.getsockopt(zmq.TCP_KEEPALIVE) == 1
            assert raw.getsockopt(zmq.TCP_KEEPALIVE_IDLE) == KEEPALIVE_IDLE_S
            assert raw.getsockopt(zmq.RECONNECT_IVL_MAX) == RECONNECT_IVL_MAX_MS
            assert sub.bind("tcp://127.0.0.1:0").startswith("tcp://127.0.0.1:")
        assert sub.closed
        async with open_socket(ctx, SocketType.DEALER) as dealer:
            assert dealer._sock.getsockopt(zmq.SNDHWM) == DEFAULT_SNDHWM


async def test_pub_sub_batched_round_trip(ctx: Context) -> None:
    count = 20_000
    with trio.fail_after(10):
        async with (
            open_socket(ctx, SocketType.PUB, sndhwm=2 * count) as pub,
            open_socket(ctx, SocketType.SUB, rcvhwm=2 * count) as sub,
        ):
            sub.subscribe(b"probe")
            sub.subscribe(b"t:")
            sub.connect(pub.bind(ANY_PORT))
            # Slow joiner: messages sent before the subscription reaches the PUB are dropped.
            for _ in range(500):
                pub.send_nowait(b"probe")
                with trio.move_on_after(0.01):
                    assert await sub.receive() == b"probe"
                    break
            else:
                pytest.fail("the subscription never reached the publisher")

            sent = [b"t:%06d:" % i + b"x" * 90 for i in range(count)]
            pub.send_nowait(b"not-subscribed")
            for msg in sent:
                assert pub.send_nowait(msg)  # PUB never blocks

            received: list[bytes] = []
            batch_sizes: list[int] = []
            while len(received) < count:
                batch = await sub.receive_batch()
                assert 1 <= len(batch) <= 1024
                batch_sizes.append(len(batch))
                received.extend(m for m in batch if not m.startswith(b"probe"))
            assert received == sent
            assert max(batch_sizes) > 1
            assert len(batch_sizes) < count // 2


async def test_receive_batch_respects_max_messages(ctx: Context) -> None:
    with trio.fail_after(5):
        async with dealer_pair(ctx) as (a, b):
            for i in range(50):
                await a.send(b"%d" % i)
            got: list[bytes] = []
            while len(got) < 50:
                batch = await b.receive_batch(7)
                assert 1 <= len(batch) <= 7
                got.extend(batch)
            assert got == [b"%d" % i for i in range(50)]
            with pytest.raises(ValueError):
                await b.receive_batch(0)


async def test_receive_batch_nowait_takes_what_is_queued_without_waiting(ctx: Context) -> None:
    with trio.fail_after(5):
        async with dealer_pair(ctx) as (a, b):
            assert b.receive_batch_nowait() == []
            for i in range(5):
                await a.send(b"%d" % i)
            got = [await b.receive()]  # (the first is there: so are the others, in order)
            while len(got) < 5:
                got.extend(b.receive_batch_nowait(2))
                await trio.lowlevel.checkpoint()
            assert got == [b"%d" % i for i in range(5)]
            assert b.receive_batch_nowait() == []
            with pytest.raises(ValueError):
                b.receive_batch_nowait(0)


async def lost_wakeup_scenario(ctx: Context, *, patience: float) -> list[bytes]:
    """A task sleeps in receive on `a`; its message arrives; another task sends on `a`.

    Returns what the receiver got within *patience* seconds after that send.
    """
    raw = ctx.socket(zmq.DEALER)
    fd = cast(int, raw.getsockopt(zmq.FD))
    async with ZmqSocket(raw) as a, open_socket(ctx, SocketType.DEALER) as b:
        b.connect(a.bind(ANY_PORT))
        await b.send(b"hello")
        assert await a.receive() == b"hello"
        got: list[bytes] = []
        done = trio.Event()

        async def receiver() -> None:
            got.append(await a.receive())
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()  # the receiver sleeps on a's fd
            b.send_nowait(b"reply")
            # Without yielding to Trio: wait until a's fd signals the reply, then let libzmq's
            # command throttle (~1 ms) pass, so that the send below processes a's mailbox and
            # so consumes the edge before Trio's I/O poll sees it.
            assert select.select([fd], [], [], 2)[0] == [fd]
            time.sleep(0.005)  # noqa: ASYNC251 (deliberately blocks the Trio loop)
            a.send_nowait(b"from-a")
            with trio.move_on_after(patience):
                await done.wait()
            nursery.cancel_scope.cancel()
        assert await b.receive() == b"from-a"
        return got


async def test_receiver_wakes_when_another_task_sends_on_its_socket(ctx: Context) -> None:
    with trio.fail_after(5):
        assert await lost_wakeup_scenario(ctx, patience=2) == [b"reply"]


async def test_lost_wakeup_scenario_stalls_without_the_wakeup(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: the scenario above does reproduce the stall when sends do not wake the sleeper."""
    monkeypatch.setattr(ZmqSocket, "_poke", lambda self: None)
    with trio.fail_after(5):
        assert await lost_wakeup_scenario(ctx, patience=0.3) == []


async def test_concurrent_send_and_receive_on_one_socket(ctx: Context) -> None:
    """One task sends, another receives on the same DEALER; the peer echoes."""
    count = 2_000
    with trio.fail_after(10):
        async with dealer_pair(ctx) as (a, b):

            async def echo() -> None:
                echoed = 0
                while echoed < count:
                    for msg in await b.receive_batch():
                        await b.send(msg)
                        echoed += 1

            async def sender() -> None:
                for i in range(count):
                    await a.send(b"%d" % i)

            received: list[bytes] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                nursery.start_soon(sender)
                while len(received) < count:
                    received.append(await a.receive())
            assert received == [b"%d" % i for i in range(count)]


async def test_two_receivers_share_one_socket(ctx: Context) -> None:
    with trio.fail_after(5):
        async with dealer_pair(ctx) as (a, b):
            got: list[bytes] = []

            async def receiver() -> None:
                got.append(await b.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                nursery.start_soon(receiver)  # parks: only one task may sleep on the fd
                await trio.testing.wait_all_tasks_blocked()
                await a.send(b"one")
                await a.send(b"two")
            assert sorted(got) == [b"one", b"two"]


async def test_xpub_sees_subscriptions_while_publishing(ctx: Context) -> None:
    with trio.fail_after(5):
        async with (
            open_socket(ctx, SocketType.XPUB) as xpub,
            open_socket(ctx, SocketType.SUB) as sub,
        ):
            sub.connect(xpub.bind(ANY_PORT))
            sub.subscribe(b"r:a")
            assert await xpub.receive() == b"\x01r:a"
            await xpub.send(b"r:a hi")
            assert await sub.receive() == b"r:a hi"
            sub.unsubscribe(b"r:a")
            assert await xpub.receive() == b"\x00r:a"


async def test_many_subscriptions_all_reach_the_publisher(ctx: Context) -> None:
    """libzmq drops subscriptions at the SUB's send HWM: open_socket lifts it for SUB sockets."""
    topics = [b"u:%05d" % i for i in range(5_000)]
    with trio.fail_after(10):
        async with (
            open_socket(ctx, SocketType.XPUB) as xpub,
            open_socket(ctx, SocketType.SUB) as sub,
        ):
            sub.connect(xpub.bind(ANY_PORT))
            for topic in topics:
                sub.subscribe(topic)
            seen: list[bytes] = []
            while len(seen) < len(topics):
                seen.extend(await xpub.receive_batch())
            assert seen == [b"\x01" + topic for topic in topics]


async def test_close_wakes_every_waiting_receiver(ctx: Context) -> None:
    with trio.fail_after(5):
        sock = open_socket(ctx, SocketType.DEALER)
        sock.bind(ANY_PORT)
        errors: list[BaseException] = []

        async def receiver() -> None:
            try:
                await sock.receive()
            except trio.ClosedResourceError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)  # sleeps on the fd
            nursery.start_soon(receiver)  # parked
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await sock.aclose()
        assert len(errors) == 2
        assert trio.current_time() - start < 0.5


async def test_calls_after_close_raise_closed_resource_error(ctx: Context) -> None:
    with trio.fail_after(5):
        sock = open_socket(ctx, SocketType.PUB)
        sock.close()
        sock.close()  # idempotent
        await sock.aclose()
        assert sock.closed
        with pytest.raises(trio.ClosedResourceError):
            await sock.send(b"x")
        with pytest.raises(trio.ClosedResourceError):
            sock.send_nowait(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await sock.receive()
        with pytest.raises(trio.ClosedResourceError):
            sock.bind(ANY_PORT)


def test_raw_socket_closed_behind_our_back(ctx: Context) -> None:
    raw = ctx.socket(zmq.PUB)
    sock = ZmqSocket(raw)
    raw.close()
    with pytest.raises(trio.ClosedResourceError):
        sock.send_nowait(b"x")
    sock.close()  # also fine outside trio.run


async def fill(sock: ZmqSocket, payload: bytes) -> int:
    """Send until a send stays blocked (the peer does not read); return how many were queued.

    The I/O thread keeps making room for a while after the first refusal, filling the TCP buffers
    and the peer's pipe, so a send counts as blocked once it waited 0.2 s; it is then cancelled.
    """
    for queued in range(10_000):
        with trio.move_on_after(0.2) as scope:
            await sock.send(payload)
        if scope.cancelled_caught:
            return queued
    pytest.fail("the socket never reached its high-water mark")


async def test_send_blocked_at_hwm_is_cancellable_then_resumes(ctx: Context) -> None:
    payload = b"x" * 65_536
    with trio.fail_after(10):
        async with dealer_pair(ctx, hwm=1) as (a, b):
            queued = await fill(a, payload)  # its last send was cancelled while blocked

            finished: list[bool] = []

            async def sender() -> None:
                await a.send(payload)
                finished.append(True)

            # The peer reads: the blocked sender must get through (it waits for POLLOUT).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                received = 0
                while received < queued + 1:  # cancelled sends sent nothing
                    received += len(await b.receive_batch())
            assert finished == [True]
            assert received == queued + 1


async def test_blocked_sender_and_blocked_receiver_on_one_socket(ctx: Context) -> None:
    """One task waits for POLLOUT, another for POLLIN, on one fd: both must get through."""
    payload = b"x" * 65_536
    with trio.fail_after(10):
        async with dealer_pair(ctx, hwm=1) as (a, b):
            queued = await fill(a, payload)
            got: list[bytes] = []

            async def receiver() -> None:
                got.append(await a.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.send, payload)
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                await b.send(b"to-a")
                received = 0
                while received < queued + 1:
                    received += len(await b.receive_batch())
            assert got == [b"to-a"]
            assert received == queued + 1


# CurveZMQ ----------------------------------------------------------------------------------


@asynccontextmanager
async def curve_server(
    ctx: Context, trusted: set[str], requests: list[ZapRequest]
) -> AsyncIterator[tuple[ZmqSocket, Keypair]]:
    """A CURVE PUB bound on 127.0.0.1, and its context's ZAP handler (a Trio task) letting in
    the keys of ``trusted``; every request is recorded in ``requests``."""
    server = curve_keypair()

    def authorize(request: ZapRequest) -> bool:
        requests.append(request)
        return request.public_key in trusted

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_zap, ctx, authorize)
        async with open_socket(ctx, SocketType.PUB, keys=server, zap_domain="test") as pub:
            yield pub, server
        nursery.cancel_scope.cancel()


async def flows(pub: ZmqSocket, sub: ZmqSocket, message: bytes) -> bool:
    """Whether ``message`` published now and again reaches ``sub`` within a second."""
    with trio.move_on_after(1.0):
        while True:
            pub.send_nowait(message)
            with trio.move_on_after(0.02):
                if message in await sub.receive_batch():
                    return True
    return False


async def test_curve_lets_in_trusted_keys_only_and_encrypts(ctx: Context) -> None:
    friend, stranger = curve_keypair(), curve_keypair()
    requests: list[ZapRequest] = []
    with trio.fail_after(10):
        async with (
            curve_server(ctx, {friend.public}, requests) as (pub, server),
            trio.open_nursery() as nursery,
        ):
            endpoint = pub.bind(ANY_PORT)
            relay = TcpRelay(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))
            relayed = f"tcp://127.0.0.1:{await nursery.start(relay.run)}"
            async with (
                open_socket(ctx, SocketType.SUB, keys=friend) as good,
                open_socket(ctx, SocketType.SUB, keys=stranger) as bad,
            ):
                with pytest.raises(ValueError, match="needs the server's key"):
                    good.connect(endpoint)
                monitor = open_monitor(ctx, bad, "bad")
                for sub in (good, bad):
                    sub.subscribe(b"r:")
                good.connect(relayed, server.public)
                bad.connect(endpoint, server.public)
                event = await monitor.next_event()
                assert (event.what, event.endpoint, event.value) == (
                    Handshake.REFUSED,
                    endpoint,
                    400,
                )
                assert await flows(pub, good, b"r:the-secret-room plain-text-payload")
                with trio.move_on_after(0.1):
                    assert not await bad.receive_batch()
                await monitor.aclose()
            nursery.cancel_scope.cancel()
    keys = {(r.domain, r.address, r.mechanism, r.public_key) for r in requests}
    assert keys == {
        ("test", "127.0.0.1", "CURVE", friend.public),
        ("test", "127.0.0.1", "CURVE", stranger.public),
    }
    assert relay.connections == 1 and len(relay.seen) > 200
    assert b"secret-room" not in relay.seen and b"plain-text" not in relay.seen
    assert b"CURVE" in relay.seen  # the handshake names its mechanism: this is the bus's traffic


async def test_without_curve_the_relay_sees_the_plain_text(ctx: Context) -> None:
    # The control for the test above: the same relay reads an insecure connection.
    with trio.fail_after(10):
        async with (
            open_socket(ctx, SocketType.PUB) as pub,
            open_socket(ctx, SocketType.SUB) as sub,
            trio.open_nursery() as nursery,
        ):
            endpoint = pub.bind(ANY_PORT)
            relay = TcpRelay(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))
            sub.subscribe(b"r:")
            sub.connect(f"tcp://127.0.0.1:{await nursery.start(relay.run)}")
            assert await flows(pub, sub, b"r:the-secret-room plain-text-payload")
            nursery.cancel_scope.cancel()
    assert b"r:the-secret-room plain-text-payload" in relay.seen


async def test_many_handshakes_at_once_are_all_answered(ctx: Context) -> None:
    # The ZAP handler's REP is on inproc:// and wakes its Trio task through zmq.FD.
    clients = [curve_keypair() for _ in range(30)]
    requests: list[ZapRequest] = []
    with trio.fail_after(10):
        async with curve_server(ctx, {c.public for c in clients}, requests) as (pub, server):
            endpoint = pub.bind(ANY_PORT)
            subs = [open_socket(ctx, SocketType.SUB, keys=c) for c in clients]
            try:
                for sub in subs:
                    sub.subscribe(b"")
                    sub.connect(endpoint, server.public)
                for sub in subs:
                    assert await flows(pub, sub, b"hello")
            finally:
                for sub in subs:
                    await sub.aclose()
    assert len(requests) == len(clients)


async def test_a_security_mismatch_is_reported(ctx: Context) -> None:
    requests: list[ZapRequest] = []
    with trio.fail_after(10):
        async with (
            curve_server(ctx, set(), requests) as (pub, _),
            open_socket(ctx, SocketType.SUB) as plain,
        ):
            endpoint = pub.bind(ANY_PORT)
            monitor = open_monitor(ctx, plain, "plain")
            plain.connect(endpoint)
            event = await monitor.next_event()
            assert (event.what, event.endpoint) == (Handshake.MISMATCH, endpoint)
            await monitor.aclose()
    assert requests == []  # a mechanism mismatch never reaches the ZAP handler


@pytest.mark.parametrize("path", ["direct", "broker"])
def test_a_stalled_subscriber_lives_through_a_flood(path: str) -> None:
    """A subscriber that stops reading at its high-water mark while a publisher floods it (a
    node too busy to read its bus), then reads again, is not aborted by libzmq: with ZMTP
    heartbeats on either end (the SUB's, or the broker's XPUB's) libzmq 4.3.5 drops the
    stalled connection and then fails an assertion in the reading process."""
    script = Path(__file__).with_name("zmq_stall.py")
    run = subprocess.run(
        [sys.executable, str(script), path],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=script.parent.parent,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) > 0  # and it still receives

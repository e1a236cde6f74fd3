"""Limits and liveness: heartbeats, rate, frame size, connection count, slow consumers."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from wsproto.events import AcceptConnection, Ping, TextMessage

from roomd import Node
from roomd.client import open_client
from roomd.hub import RateLimiter
from tests.cluster_support import NodeProc
from tests.support import connect, make_config, read_until_close, silent_websocket, wait_until


async def test_silent_client_is_pinged_then_closed_4004(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(heartbeat={"interval": 0.1, "timeout": 0.4})
    with trio.fail_after(5):
        stream, ws = await silent_websocket(node.port or 0)
        async with stream:
            ws.receive_data(await stream.receive_some(65536))
            assert any(isinstance(e, AcceptConnection) for e in ws.events())
            # Say hello (so the handshake timeout is not what closes it), then go silent.
            await stream.send_all(ws.send(TextMessage('{"type":"hello","v":1}')))
            code, events = await read_until_close(stream, ws)
    assert code == 4004
    assert any(isinstance(e, Ping) for e in events)


async def test_responsive_client_survives_heartbeats(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(heartbeat={"interval": 0.05, "timeout": 0.2})
    with trio.fail_after(5):
        async with connect(node, "alice") as a:
            await trio.sleep(0.8)  # four timeouts long: trio-websocket answers the node's pings
            assert await a.ok("users.online", {}) == {"users": ["alice"]}


async def test_a_heartbeat_beat_looks_only_at_the_connections_due(
    start_node: Callable[..., Any], monkeypatch: Any
) -> None:
    """The sweep does not walk every connection on every beat (a node of 100,000 connections
    would stall each second): a connection is looked at when it could be due for a ping."""
    node: Node = await start_node(heartbeat={"interval": 1.0, "timeout": 4.0})
    looked: list[float] = []
    look_at = node._look_at

    def counted(conn: Any, transport: Any, now: float) -> float | None:
        looked.append(now)
        return look_at(conn, transport, now)

    monkeypatch.setattr(node, "_look_at", counted)
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(node, f"u{i}")) for i in range(20)]
            opened = trio.current_time()
            await trio.sleep(0.6)  # two beats (of 0.25 s) and more, none of them due
            assert looked == []
            await trio.sleep(opened + 1.6 - trio.current_time())  # silent for an interval
            assert 20 <= len(looked) <= 40  # each once or twice: pinged, then its pong
            assert all(t >= opened + 1.0 - 0.3 for t in looked)  # (each opened before `opened`)
            for client in clients:  # the pings were answered: all are served
                assert await client.ok("users.online", {}) is not None


async def test_a_paused_connection_is_not_judged_silent_until_it_is_read_again(
    start_node: Callable[..., Any],
) -> None:
    """A connection the node stopped reading (flow control) is not pinged or closed for a
    silence that is the node's own; once read again, its silence counts from then."""
    node: Node = await start_node(heartbeat={"interval": 0.1, "timeout": 0.4})
    with trio.fail_after(5):
        stream, ws = await silent_websocket(node.port or 0)
        async with stream:
            ws.receive_data(await stream.receive_some(65536))
            await stream.send_all(ws.send(TextMessage('{"type":"hello","v":1}')))
            await wait_until(lambda: any(c.session.is_open for c in node._connected))
            (transport,) = node._connected.values()
            transport.pause_reading()
            await trio.sleep(1.0)  # two and a half timeouts: long since closed, were it read
            assert not transport.closing and transport.last_ping == 0.0
            resumed = trio.current_time()
            transport.resume_reading()
            code, events = await read_until_close(stream, ws)
            assert code == 4004 and any(isinstance(e, Ping) for e in events)
            assert trio.current_time() - resumed >= 0.4  # silent for a timeout from the resume


async def test_handshake_timeout(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"handshake_timeout": 0.3})
    with trio.fail_after(5):
        async with connect(node, "alice", hello=False) as c:
            assert (await c.closed())[0] == 4000
        stream = await trio.open_tcp_stream("127.0.0.1", node.port or 0)
        async with stream:
            assert await stream.receive_some(100) == b""  # nothing sent: dropped


async def test_rate_limit_errors_then_closes_4009(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"rate": 1.0, "burst": 5, "max_strikes": 3})
    with trio.fail_after(5):
        async with connect(node, "alice") as c, connect(node, "bob") as other:
            for i in range(1, 9):
                await c.send({"type": "event", "id": i, "event": "users.online", "data": {}})
            frames = [await c.recv() for _ in range(7)]
            # The hello took one token of five: four acks, three refusals, then the close.
            assert [f["type"] for f in frames] == ["ack"] * 4 + ["error"] * 3
            assert {(f["code"], f["ref"]) for f in frames[4:]} == {
                ("rate_limited", 5),
                ("rate_limited", 6),
                ("rate_limited", 7),
            }
            assert (await c.closed())[0] == 4009
            # bob is served; alice's session waits for her to resume (4009 asks to reconnect).
            assert await other.ok("users.online", {}) == {"users": ["alice", "bob"]}


def test_strikes_accumulate_while_a_client_stays_over_the_rate() -> None:
    limiter = RateLimiter(rate=50.0, burst=10, now=0.0)
    now, refused = 0.0, 0
    # 10% over the rate for 8 s: once the burst is spent, refusals interleave with accepted
    # frames (5 a second), and strikes grow by 4 a second.
    for _ in range(440):
        now += 1 / 55
        refused += not limiter.take(now)
    assert 25 <= refused <= 35
    assert 15 <= limiter.strikes <= 25


def test_an_occasional_refusal_fades() -> None:
    limiter = RateLimiter(rate=10.0, burst=1, now=0.0)
    now = 0.0
    for _ in range(20):  # one refused frame every 2 s
        assert limiter.take(now) and not limiter.take(now)
        now += 2.0
    assert limiter.strikes == 1


async def test_events_over_the_inflight_limit_are_busy(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_inflight_events": 2})
    release = trio.Event()

    @node.on("slow")
    async def slow(ctx: Any, data: Any) -> Any:
        await release.wait()
        return data

    with trio.fail_after(5):
        async with connect(node, "alice") as c:
            for i in (1, 2, 3):
                await c.send({"type": "event", "id": i, "event": "slow", "data": i})
            busy = await c.expect("ack", id=3)
            assert busy["error"]["code"] == "busy"
            release.set()
            assert (await c.expect("ack", id=1))["result"] == 1
            assert (await c.expect("ack", id=2))["result"] == 2
            assert await c.ok("slow", 4) == 4  # room again once they are done


async def test_oversized_frame_closes_1009(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_frame_bytes": 1024})
    with trio.fail_after(5):
        async with connect(node, "alice") as c, connect(node, "bob") as other:
            await c.ws.send_message("x" * 2000)
            assert (await c.closed())[0] == 1009
            await other.ws.send_message("é" * 600)  # 1200 bytes of UTF-8
            assert (await other.closed())[0] == 1009
        async with connect(node, "carol") as ok:
            await ok.send(
                {"type": "event", "id": 1, "event": "users.online", "data": {"pad": "y" * 900}}
            )
            # alice's and bob's sessions wait to be resumed (1009 asks them to reconnect).
            assert (await ok.expect("ack", id=1))["result"] == {"users": ["alice", "bob", "carol"]}


async def test_max_connections_closes_1013(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_connections": 2})
    with trio.fail_after(5):
        async with connect(node, "a"), connect(node, "b") as b:
            async with connect(node, "c", hello=False) as c:
                assert (await c.closed())[0] == 1013
            assert await b.ok("users.online", {}) == {"users": ["a", "b"]}
        async with connect(node, "d") as d:
            assert d.welcome["user"] == "d"
    assert node.stats.rejected["max_connections"] == 1


async def test_slow_consumer_closed_4008_while_fast_one_keeps_up(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node(
        limits={"outbox_max_bytes": 64 * 1024, "close_timeout": 0.5}, permissions={}
    )
    payload = "p" * 1000
    with trio.fail_after(10):
        stream, ws = await silent_websocket(node.port or 0, "?user=slow")
        async with stream, connect(node, "fast") as fast:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ws.receive_data(await stream.receive_some(65536))
            list(ws.events())
            await stream.send_all(ws.send(TextMessage('{"type":"hello","v":1}')))
            await stream.send_all(
                ws.send(TextMessage('{"type":"event","event":"room.join","data":{"room":"r"}}'))
            )
            await fast.ok("room.join", {"room": "r"})
            sent = 0
            for _ in range(200):  # at most 200 x 50 KB
                for _ in range(50):
                    node.send_to_room("r", "bulk", payload)
                    sent += 1
                for _ in range(50):
                    await fast.push("bulk")
                if node.stats.close_codes[4008]:
                    break
            assert node.stats.close_codes[4008] == 1
            assert sent >= 64  # it took more than a full outbox to get there
            node.send_to_room("r", "after", 1)  # only the fast one is left to get it
            assert (await fast.push("after"))["data"] == 1
            assert node.stats.close_codes[4008] == 1


async def test_slow_reader_is_served_without_harm(start_node: Callable[..., Any]) -> None:
    """A reader that keeps the kernel's buffer full makes the node wait for writability many
    times over; the node keeps serving it (or closes it 4008), and everyone else."""
    node: Node = await start_node(limits={"outbox_max_bytes": 4 * 1024 * 1024})
    with trio.fail_after(20):
        stream, ws = await silent_websocket(node.port or 0, "?user=slow")
        async with stream, connect(node, "fast") as fast:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ws.receive_data(await stream.receive_some(65536))
            list(ws.events())
            await stream.send_all(ws.send(TextMessage('{"type":"hello","v":1}')))
            join = '{"type":"event","id":1,"event":"room.join","data":{"room":"r"}}'
            await stream.send_all(ws.send(TextMessage(join)))
            await fast.ok("room.join", {"room": "r"})
            received = 0
            done = trio.Event()

            async def read_slowly() -> None:
                nonlocal received
                for _ in range(100_000):
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    ws.receive_data(data)
                    received += sum(1 for e in ws.events() if isinstance(e, TextMessage))
                    if received >= 500 + 2:
                        break
                    await trio.lowlevel.checkpoint()
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_slowly)
                for i in range(500):
                    node.send_to_room("r", "bulk", "x" * 200)
                    if i % 100 == 99:
                        await trio.lowlevel.checkpoint()
                for _ in range(500):
                    await fast.push("bulk")
                await done.wait()
            assert received >= 500 + 2 or node.stats.close_codes[4008] == 1
            assert await fast.ok("users.online", {}) == {"users": ["fast", "slow"]}


async def test_a_client_is_not_read_while_its_sends_wait_for_the_cluster(
    nursery: trio.Nursery,
) -> None:
    """Flow control: with ``max_waiting_events`` sends of a client waiting for their sequencer
    (another node, held busy here), its node stops reading it: the rest of what it sent waits
    in TCP, not in the node. Once the sequencer answers, it is read again and every send is
    answered, in order."""
    from roomd.cluster import MemoryNetwork, user_stream
    from roomd.cluster._streams import ranking

    network = MemoryNetwork()
    nodes: dict[str, Node] = {}
    for name in ("near", "seq"):
        config = make_config(
            node={"name": name},
            cluster={"mode": "broker", "insecure": True},
            limits={"max_waiting_events": 4, "rate": 1e6, "burst": 10**6},
        )
        nodes[name] = Node(config, bus=network.bus(name))
        with trio.fail_after(10):
            await nursery.start(nodes[name].run)
    near = nodes["near"]
    # an addressee whose inbox the other node numbers
    bob = next(
        u for u in (f"bob{i}" for i in range(100)) if ranking(user_stream(u), nodes)[0] == "seq"
    )
    text = {"type": "text", "payload": {"content": "hi"}}
    with trio.fail_after(10):
        async with connect(nodes["seq"], bob) as b, connect(near, "alice") as a:
            await a.ok("send", {"to": {"user": bob}, "data": text})  # the path works
            await b.push("message")
            bus = network.buses["seq"]
            read = bus.received
            network.hold("seq")  # the sequencer is busy with what it reads next (a heartbeat)
            await wait_until(lambda: bus.received > read)
            for i in range(10):
                await a.send(
                    {
                        "type": "event",
                        "id": 100 + i,
                        "event": "send",
                        "data": {"to": {"user": bob}, "data": text},
                    }
                )
            await wait_until(lambda: near.stats.reads_paused == 1)
            frames = near.stats.frames_in
            assert frames == 2 + 4  # hello, the first send, then four: no more is read
            network.release("seq")
            for i in range(10):
                ack = await a.expect("ack", id=100 + i)
                assert "error" not in ack, ack
            assert near.stats.frames_in == 2 + 10
            for _ in range(10):
                await b.push("message")


async def test_accepted_connections_send_without_delay(node: Node) -> None:
    """Nagle's algorithm is off on every connection the node accepts (a small push is not held
    back waiting for an acknowledgement)."""
    with trio.fail_after(5):
        async with connect(node, "alice"):
            (transport,) = node._connected.values()
            sock = transport._sock
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert not sock.getblocking()


_LIMITED_NODE = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
sys.argv = ["roomd", "--dev", "--port", "0"]
runpy.run_module("roomd.cli", run_name="__main__")
"""


async def test_a_node_out_of_file_descriptors_keeps_serving(tmp_path: Path) -> None:
    """With no file descriptor left, accept() fails: the node says so, waits, and accepts again
    once connections have closed; nothing else stops."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            proc = NodeProc("limited", [sys.executable, "-c", _LIMITED_NODE], env=env)
            await proc.start(nursery)
            try:
                port = int((await proc.wait_for(r"listening on \S+:(\d+)")).group(1))
                held = []
                for _ in range(60):  # more than the descriptors left: the rest wait in the backlog
                    held.append(await trio.open_tcp_stream("127.0.0.1", port))
                await proc.wait_for("accept failed .*Too many open files.*; retrying")
                for stream in held:
                    await stream.aclose()
                async with open_client(f"ws://127.0.0.1:{port}", user="dora") as client:
                    assert await client.call("users.online", {}) == {"users": ["dora"]}
                assert await proc.stop() == 0
            finally:
                proc.kill()

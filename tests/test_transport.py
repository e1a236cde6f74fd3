"""The outbox policy of a connection: volatile pushes go first, then the connection (4008)."""

from __future__ import annotations

import contextlib
import itertools
import socket

import orjson
import trio
from wsproto.events import AcceptConnection, TextMessage

from roomd import Node
from roomd.io import Flusher, Readers, Transport
from roomd.node import Stats
from tests.support import connect, read_until_close, silent_websocket


def _masked(text: str) -> bytes:
    """A client's text frame (under 126 bytes), masked with a zero key."""
    return bytes((0x81, 0x80 | len(text))) + bytes(4) + text.encode()


async def test_volatile_pushes_are_dropped_first_then_the_connection_closes_4008() -> None:
    ours, theirs = socket.socketpair()  # nothing is written: the flusher never runs
    with ours, theirs:
        stats = Stats()
        outbox = Transport(
            ours, stats, Flusher(), Readers(), max_message=1024, max_bytes=1000, close_timeout=1
        )
        assert outbox.send_frame(b"r" * 400)
        assert outbox.send_frame(b"v" * 100, volatile=True)  # 500: up to half full, kept
        assert not outbox.send_frame(b"v" * 10, volatile=True)  # over half full: dropped
        assert stats.dropped == 1
        assert outbox.send_frame(b"r" * 450)  # 950 of 1000
        assert outbox.send_frame(b"r" * 100)  # fits only once the queued volatile one is gone
        assert stats.dropped == 2 and not outbox.closing
        assert not outbox.send_frame(b"r" * 100)  # nothing left to evict
        assert outbox.closing and outbox.close_code == 4008
        assert stats.close_codes[4008] == 1
        assert not outbox.send_frame(b"r")  # closing: nothing more is queued


async def test_replies_before_a_protocol_violation_in_the_same_read_are_sent(node: Node) -> None:
    """A valid hello and ping, then an unmasked frame, all in one write: the welcome and the
    pong go out before the close 1002."""
    with trio.fail_after(5):
        stream, ws = await silent_websocket(node.port or 0)
        async with stream:
            ws.receive_data(await stream.receive_some(65536))
            assert any(isinstance(e, AcceptConnection) for e in ws.events())
            data = ws.send(TextMessage('{"type":"hello","v":1}'))
            data += ws.send(TextMessage('{"type":"ping","ts":7}'))
            data += bytes((0x81, 0x01)) + b"x"  # a client frame must be masked
            await stream.send_all(data)
            code, events = await read_until_close(stream, ws)
    texts = [orjson.loads(e.data) for e in events if isinstance(e, TextMessage)]
    assert [t["type"] for t in texts] == ["welcome", "pong"]
    assert code == 1002


async def test_a_burst_in_one_read_lets_other_tasks_run_between_turns() -> None:
    """1,000 messages arrive in one read: the reader handles them a turn at a time
    (``MESSAGES_PER_TURN``), so a task waiting to run (a timer, the bus, another connection)
    runs long before the last one is handled, not after."""
    from roomd.io._transport import MESSAGES_PER_TURN

    data = b"".join(_masked(f"m{i}") for i in range(1000))
    ours, theirs = socket.socketpair()
    with ours, theirs, trio.fail_after(5):
        theirs.sendall(data)
        readers = Readers()
        transport = Transport(
            ours, Stats(), Flusher(), readers, max_message=1024, max_bytes=1 << 20, close_timeout=1
        )
        handled: list[bytes | str] = []
        seen_by_other: list[int] = []
        all_handled = trio.Event()

        def on_message(owner: object, message: bytes | str, binary: bool) -> None:
            handled.append(message)
            if len(handled) == 1000:
                all_handled.set()

        async def other() -> None:
            while not all_handled.is_set():
                seen_by_other.append(len(handled))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            await nursery.start(readers.run)
            nursery.start_soon(transport.run, on_message, None)
            nursery.start_soon(other)
            await all_handled.wait()
            nursery.cancel_scope.cancel()
    assert handled == [f"m{i}" for i in range(1000)]  # all, in order
    steps = [b - a for a, b in itertools.pairwise(seen_by_other)]
    # (a scheduling round runs each ready task once, in either order: two turns at most)
    assert MESSAGES_PER_TURN <= 32
    assert steps and max(steps) <= 64
    assert len(seen_by_other) >= 1000 // 64


def _tasks_under(nursery: trio.Nursery) -> int:
    count, nurseries = 0, [nursery]
    while nurseries:
        for task in nurseries.pop().child_tasks:
            count += 1
            nurseries.extend(task.child_nurseries)
    return count


async def test_an_idle_connection_has_no_task_of_its_own(node: Node) -> None:
    """Twenty clients that said hello, joined a room and sent a ping: the node reads them all
    from its one reading task, and none of them has a task (or nursery) left once idle."""
    assert node._nursery is not None
    with trio.fail_after(10):
        before = _tasks_under(node._nursery)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(node, f"u{i}")) for i in range(20)]
            for client in clients:
                await client.ok("room.join", {"room": "lobby"})
                await client.send({"type": "ping", "ts": 1})
                await client.expect("pong")
            assert len(node.readers) == 20
            assert _tasks_under(node._nursery) == before
            # and they are still served: a message to the room reaches all twenty
            data = {"type": "text", "payload": {"content": "hi"}}
            await clients[0].ok("send", {"to": {"room": "lobby"}, "data": data})
            for client in clients:
                assert (await client.push("message"))["data"]["payload"] == data["payload"]


async def test_a_handler_that_raises_ends_its_connection_not_the_others() -> None:
    """The reading task serves every connection: a defect met in one connection's handler
    closes that connection (logged) and the others go on being read."""

    (bad, bad_peer), (good, good_peer) = socket.socketpair(), socket.socketpair()
    with bad, bad_peer, good, good_peer, trio.fail_after(5):
        readers, flusher, stats = Readers(), Flusher(), Stats()
        got: list[bytes | str] = []
        closed: list[str] = []
        two = trio.Event()

        def on_message(owner: object, message: bytes | str, binary: bool) -> None:
            if owner == "bad":
                raise RuntimeError("a defect")
            got.append(message)
            if len(got) == 2:
                two.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(readers.run)
            for sock, owner in ((bad, "bad"), (good, "good")):
                transport = Transport(
                    sock,
                    stats,
                    flusher,
                    readers,
                    max_message=1024,
                    max_bytes=4096,
                    close_timeout=1,
                )
                await transport.start(on_message, owner, None, closed.append)
            bad_peer.sendall(_masked("x"))
            good_peer.sendall(_masked("one"))
            await trio.lowlevel.wait_readable(bad_peer)
            assert bad_peer.recv(100) == b""  # closed at once, without a close frame
            assert closed == ["bad"] and len(readers) == 1
            good_peer.sendall(_masked("two"))
            await two.wait()
            nursery.cancel_scope.cancel()
    assert got == ["one", "two"]
    assert closed == ["bad", "good"]  # the readers close what is left as they stop


async def test_a_connection_handed_over_as_the_readers_stop_is_closed() -> None:
    """A handshake that ends as the node stops (its readers already have): the connection is
    closed and its owner told, nothing raises."""
    ours, theirs = socket.socketpair()
    with ours, theirs, trio.fail_after(5):
        readers = Readers()
        async with trio.open_nursery() as nursery:
            await nursery.start(readers.run)
            nursery.cancel_scope.cancel()
        transport = Transport(
            ours, Stats(), Flusher(), readers, max_message=1024, max_bytes=4096, close_timeout=1
        )
        closed: list[str] = []
        await transport.start(lambda *args: None, "late", None, closed.append)
        assert closed == ["late"] and transport.closing
        assert theirs.recv(10) == b""


async def test_a_paused_connection_is_read_on_resume_and_a_peer_gone_is_noticed() -> None:
    """Paused, nothing is handled (what was read waits in the parser, the rest in the socket);
    resumed, all of it is, in order. A peer that leaves while paused is noticed on resuming
    (the socket is out of the readers' set meanwhile: its hang-up wakes nobody)."""

    ours, theirs = socket.socketpair()
    with ours, theirs, trio.fail_after(5):
        readers = Readers()
        got: list[bytes | str] = []
        closed: list[str] = []
        transport = Transport(
            ours, Stats(), Flusher(), readers, max_message=1024, max_bytes=4096, close_timeout=1
        )

        def on_message(owner: object, message: bytes | str, binary: bool) -> None:
            got.append(message)
            if message == "two":
                transport.pause_reading()

        async with trio.open_nursery() as nursery:
            await nursery.start(readers.run)
            await transport.start(on_message, "peer", None, closed.append)
            theirs.sendall(_masked("one") + _masked("two") + _masked("three"))
            while len(got) < 2:  # (the readers run once the socket is readable)
                await trio.lowlevel.checkpoint()
            theirs.sendall(_masked("four"))
            theirs.close()  # gone while paused
            for _ in range(50):  # others run; the paused connection is left alone
                await trio.lowlevel.checkpoint()
            assert got == ["one", "two"] and closed == [] and transport.paused
            transport.resume_reading()
            while not closed:
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    assert got == ["one", "two", "three", "four"]
    assert closed == ["peer"]

"""Graceful shutdown: in an embedding application, and of the `roomd` process on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import trio

from roomd import Node
from tests.support import connect, make_config, upgrade


async def test_shutdown_closes_every_connection_1001_and_returns() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            node = Node(make_config())
            await nursery.start(node.run)
            async with connect(node, "alice") as a, connect(node, "bob") as b:
                await a.ok("room.join", {"room": "r"})
                node.send_to_room("r", "last", 1)  # queued before the close: still delivered
                node.shutdown()
                assert (await a.push("last"))["data"] == 1
                assert (await a.closed()) == (1001, "going away")
                assert (await b.closed())[0] == 1001
        # run() returned: the nursery exited. New connections are refused.
        try:
            await trio.open_tcp_stream("127.0.0.1", node.port or 0)
        except OSError:
            pass
        else:
            raise AssertionError("node still accepting")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_roomd_process_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "ROOMD_SECRET": "s" * 32}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "roomd.cli", "--name", "procA", "--port", str(port), "--dev"],
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        with trio.fail_after(10):
            assert proc.stderr is not None
            log = b""
            while b"listening on" not in log:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, log
                log += chunk
            node = Node(make_config(node={"port": port}))  # only for its port, never run
            node.port = port
            async with connect(node, "alice") as a:
                assert a.welcome["node"] == "procA"
                proc.send_signal(signal.SIGTERM)
                assert (await a.closed())[0] == 1001
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _receive_at_least(stream: trio.SocketStream, data: bytes, size: int) -> bytes:
    for _ in range(100):
        if len(data) >= size:
            return data
        chunk = await stream.receive_some(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    raise AssertionError("too many reads")


async def _close_code(stream: trio.SocketStream, data: bytes = b"") -> int:
    """Read past the 101 response (if ``data`` is empty) to a close frame; its code."""
    for _ in range(100):
        if b"\r\n\r\n" in data:
            break
        chunk = await stream.receive_some(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    rest = await _receive_at_least(stream, rest, 4)
    assert rest[0] == 0x88, rest  # FIN + close, unmasked
    return int.from_bytes(rest[2:4], "big")


async def test_an_upgrade_finishing_during_shutdown_is_closed_1001() -> None:
    config = make_config(limits={"close_timeout": 3.0}, shutdown={"grace": 4.0})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            node = Node(config)
            port = await nursery.start(node.run)
            # alice never answers the close handshake: the node waits for her (close_timeout).
            alice = await trio.open_tcp_stream("127.0.0.1", port)
            await alice.send_all(upgrade("/ws?user=alice"))
            bob = await trio.open_tcp_stream("127.0.0.1", port)
            request = upgrade("/ws?user=bob")
            await bob.send_all(request[:-2])  # bob's upgrade is not complete yet
            data = await _receive_at_least(alice, b"", 1)  # alice is upgraded
            node.shutdown()
            assert await _close_code(alice, data) == 1001
            await bob.send_all(request[-2:])
            with trio.fail_after(1):  # at once, not when alice's close times out
                assert await _close_code(bob) == 1001

"""Graceful shutdown: in an embedding application, and of the `roomd` process on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import trio

from roomd import Node
from tests.support import connect, make_config


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

"""The command loop of the benchmark's helper processes (the bus ends, the fault workloads'
clients): one JSON command per line on stdin, one JSON reply per line on stdout."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio


async def serve_commands(handle: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
    """Answer each command with ``handle(command)`` until ``{"cmd": "quit"}`` or the end of
    stdin."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    pending = b""
    while chunk := await stdin.receive_some(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            command = orjson.loads(line)
            if command.get("cmd") == "quit":
                return
            reply = await handle(command)
            await stdout.send_all(orjson.dumps(reply) + b"\n")

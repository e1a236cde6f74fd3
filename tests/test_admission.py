"""Caps on connections: handshakes in progress, per address, per user; connections still in
the HTTP handshake count toward the node's limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected

from roomd import Node
from tests.support import connect, wait_until


@asynccontextmanager
async def idle_tcp(node: Node, count: int) -> AsyncIterator[list[trio.SocketStream]]:
    """``count`` TCP connections that send nothing (they stay in the HTTP handshake)."""
    async with AsyncExitStack() as stack:
        streams = []
        for _ in range(count):
            stream = await trio.open_tcp_stream("127.0.0.1", node.port or 0)
            streams.append(await stack.enter_async_context(stream))
        await wait_until(lambda: node.admission.handshaking >= count)
        yield streams


async def read_answer(stream: trio.SocketStream) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, orjson.loads(body)


async def test_handshakes_in_progress_are_capped_503(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_handshakes": 2})
    with trio.fail_after(5):
        async with idle_tcp(node, 2) as idle:
            # A third is answered at once, before it sends anything.
            refused = await trio.open_tcp_stream("127.0.0.1", node.port or 0)
            async with refused:
                status, headers, body = await read_answer(refused)
            assert status == 503 and headers["retry-after"] == "1"
            assert body == {"error": "too many connections in handshake"}
            with pytest.raises(ConnectionRejected) as info:
                async with connect(node, "alice"):
                    pass
            assert info.value.status_code == 503
            await idle[0].aclose()
            await wait_until(lambda: node.admission.handshaking == 1)
            async with connect(node, "alice") as a:  # a finished handshake frees its slot
                assert node.admission.handshaking == 1
                assert await a.ok("users.online", {}) == {"users": ["alice"]}
    assert node.stats.rejected["max_handshakes"] == 2


async def test_connections_per_address_are_capped_429(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_connections_per_ip": 2})
    with trio.fail_after(5):
        async with connect(node, "alice"), idle_tcp(node, 1):
            with pytest.raises(ConnectionRejected) as info:
                async with connect(node, "bob"):
                    pass
            assert info.value.status_code == 429
            assert orjson.loads(info.value.body or b"") == {
                "error": "too many connections from this address"
            }
        await wait_until(lambda: node.admission.total == 0)
        async with connect(node, "bob"), connect(node, "carol") as c:
            assert await c.ok("users.online", {}) == {"users": ["bob", "carol"]}
    assert node.stats.rejected["max_connections_per_ip"] == 1


async def test_connections_per_user_are_capped_429(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_connections_per_user": 2})
    with trio.fail_after(5):
        async with connect(node, "alice"), connect(node, "alice") as a:
            for _ in range(3):
                with pytest.raises(ConnectionRejected) as info:
                    async with connect(node, "alice"):
                        pass
                assert info.value.status_code == 429
            async with connect(node, "bob") as b:  # another user is not affected
                assert await b.ok("users.online", {}) == {"users": ["alice", "bob"]}
            # A send to alice reaches two connections, not every slot of the node.
            assert len(node.hub.users["alice"]) == 2
            assert await a.ok("users.online", {}) == {"users": ["alice"]}
        await wait_until(lambda: node.admission.total == 0)
        async with connect(node, "alice") as again:
            assert again.welcome["user"] == "alice"
    assert node.stats.rejected["max_connections_per_user"] == 3


async def test_handshaking_connections_count_toward_max_connections(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node(limits={"max_connections": 2})
    with trio.fail_after(5):
        async with idle_tcp(node, 1), connect(node, "a") as a:
            async with connect(node, "b", hello=False) as b:
                assert (await b.closed())[0] == 1013
            assert await a.ok("users.online", {}) == {"users": ["a"]}
    assert node.stats.rejected["max_connections"] == 1

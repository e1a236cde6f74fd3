"""Authentication happens during the upgrade: a bad token never gets a WebSocket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from roomd import Node
from roomd.node import mint_token
from tests.support import SECRET, connect, upgrade


async def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """Send a raw request, return (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        for _ in range(1000):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.fixture
async def prod_node(start_node: Callable[..., Any]) -> Node:
    node: Node = await start_node(auth={"dev": False})
    return node


async def test_token_in_query_and_header_accepted(prod_node: Node) -> None:
    token = mint_token(SECRET, "alice", 60)
    with trio.fail_after(5):
        async with connect(prod_node, token=token) as c:
            assert c.welcome["user"] == "alice"
        async with connect(prod_node, None, headers=[("Authorization", f"Bearer {token}")]) as c:
            assert c.welcome["user"] == "alice"


@pytest.mark.parametrize(
    "query",
    [
        "",  # no credentials
        "?user=alice",  # development-mode names are refused in production
        "?token=not-a-jwt",
        "?token=" + mint_token("another-secret-of-sufficient-length!", "alice", 60),
        "?token=" + mint_token(SECRET, "alice", -60),  # expired
    ],
)
async def test_bad_credentials_get_401_and_no_websocket(prod_node: Node, query: str) -> None:
    with trio.fail_after(5):
        status, body = await raw_http(prod_node.port or 0, upgrade(f"/ws{query}"))
        assert status == 401
        assert orjson.loads(body)["error"]
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(f"ws://127.0.0.1:{prod_node.port}/ws{query}"):
                pass
        assert info.value.status_code == 401
    assert prod_node.stats.connections_total == 0


async def test_expired_token_message_says_so(prod_node: Node) -> None:
    token = mint_token(SECRET, "alice", -60)
    with trio.fail_after(5):
        status, body = await raw_http(prod_node.port or 0, upgrade(f"/ws?token={token}"))
    assert status == 401 and b"expired" in body


async def test_dev_mode_accepts_names(node: Node) -> None:
    with trio.fail_after(5):
        async with connect(node, "carol") as c:
            assert c.welcome["user"] == "carol"
        status, _ = await raw_http(node.port or 0, upgrade("/ws?user=%01bad"))
        assert status == 401


async def test_malformed_upgrades_are_refused(node: Node) -> None:
    port = node.port or 0
    with trio.fail_after(5):
        bad_version = upgrade("/ws?user=a").replace(b"Version: 13", b"Version: 8")
        assert (await raw_http(port, bad_version))[0] == 426
        bad_key = upgrade("/ws?user=a").replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short")
        assert (await raw_http(port, bad_key))[0] == 400
        assert (await raw_http(port, upgrade("/elsewhere?user=a")))[0] == 404
        assert (await raw_http(port, b"NONSENSE\r\n\r\n"))[0] == 400

"""Access control: allowed origins, room grants in tokens, the application's hook, operators,
and the protection of /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio

from roomd import Access, Context, HandlerError, Node
from roomd.node import mint_token
from tests.support import SECRET, connect, upgrade
from tests.test_cluster_calls import embedded_cluster
from tests.test_upgrade import exchange

ADMIN = "admin-token-0123456789abcdef0123456789"


def token(user: str, **claims: Any) -> str:
    return mint_token(SECRET, user, 3600, **claims)


async def status_with_origin(node: Node, origin: str | None, query: str) -> int:
    headers = () if origin is None else (f"Origin: {origin}",)
    status, _, body = await exchange(node.port or 0, upgrade(f"/ws{query}", *headers))
    if status == 403:
        assert orjson.loads(body) == {"error": "origin not allowed"}
    return status


async def test_token_mode_allows_its_own_host_and_pages_without_origin(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node(auth={"dev": False})
    query = f"?token={token('alice')}"
    port = node.port
    with trio.fail_after(5):
        assert await status_with_origin(node, None, query) == 101  # not a browser
        # support.upgrade() sends Host: 127.0.0.1 (no port): the same host means port 80 too.
        assert await status_with_origin(node, "http://127.0.0.1", query) == 101
        assert await status_with_origin(node, f"http://127.0.0.1:{port}", query) == 403
        for origin in ("http://evil.example", "https://127.0.0.1", "null", "http://localhost"):
            assert await status_with_origin(node, origin, query) == 403, origin
    assert node.stats.rejected["403"] == 5


async def test_allowed_origins_and_any(start_node: Callable[..., Any]) -> None:
    listed: Node = await start_node(
        auth={"dev": False}, access={"allowed_origins": ["https://App.example.com"]}
    )
    anyone: Node = await start_node(auth={"dev": False}, access={"allowed_origins": ["*"]})
    query = f"?token={token('alice')}"
    with trio.fail_after(5):
        assert await status_with_origin(listed, "https://app.example.com", query) == 101
        assert await status_with_origin(listed, "https://app.example.com/", query) == 101
        assert await status_with_origin(listed, "http://app.example.com", query) == 403
        assert await status_with_origin(anyone, "http://evil.example", query) == 101


async def test_dev_mode_allows_pages_of_this_machine_only(node: Node) -> None:
    with trio.fail_after(5):
        for origin in ("http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8080"):
            assert await status_with_origin(node, origin, "?user=dev") == 101, origin
        for origin in ("http://evil.example", "https://localhost.evil.example", "null"):
            assert await status_with_origin(node, origin, "?user=dev") == 403, origin


async def test_rooms_and_namespaces_claims_grant_joins(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(auth={"dev": False})
    claims = {"rooms": ["lobby", {"ns": "games", "room": "chess"}], "namespaces": ["support"]}
    with trio.fail_after(5):
        async with connect(node, token=token("alice", **claims)) as a:
            await a.ok("room.join", {"room": "lobby"})
            await a.ok("room.join", {"room": "chess", "ns": "games"})
            await a.ok("room.join", {"room": "ticket-17", "ns": "support"})
            for room, ns in (("other", "/"), ("go", "games"), ("lobby", "games")):
                ack = await a.call("room.join", {"room": room, "ns": ns})
                assert ack["error"]["code"] == "forbidden", (room, ns)
            # A send needs membership, so a room it may not join it cannot send to either.
            ack = await a.call("send", {"to": {"room": "other"}, "event": "x"})
            assert ack["error"]["code"] == "not_in_room"
        async with connect(node, token=token("bob")) as b:  # no claims: any room
            await b.ok("room.join", {"room": "other"})
    assert sorted(node.hub.rooms) == []


async def test_require_room_claims(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(auth={"dev": False}, access={"require_room_claims": True})
    with trio.fail_after(5):
        async with connect(node, token=token("bob")) as b:
            ack = await b.call("room.join", {"room": "lobby"})
            assert ack["error"] == {"code": "forbidden", "message": "this token grants no rooms"}
        async with connect(node, token=token("alice", rooms=["lobby"])) as a:
            await a.ok("room.join", {"room": "lobby"})


async def test_the_application_hook_allows_or_refuses(node: Node) -> None:
    seen: list[tuple[str, Access]] = []

    @node.authorize
    def policy(ctx: Context, access: Access) -> bool:
        seen.append((ctx.user, access))
        if access.event == "boom":
            raise RuntimeError("a defect in the hook")
        if access.event == "custom-code":
            raise HandlerError("muted", "you are muted")
        if access.action == "join":
            return access.room != ("/", "vip") or ctx.user == "boss"
        if access.action == "typing":
            return access.room != ("/", "quiet")
        return access.event != "secret" and access.users != ("boss",)

    with trio.fail_after(5):
        async with connect(node, "alice") as a, connect(node, "boss") as boss:
            assert (await a.call("room.join", {"room": "vip"}))["error"]["code"] == "forbidden"
            await boss.ok("room.join", {"room": "vip"})
            await a.ok("room.join", {"room": "quiet"})
            assert (await a.call("typing", {"room": "quiet"}))["error"]["code"] == "forbidden"
            ack = await a.call("send", {"to": {"room": "quiet"}, "event": "secret"})
            assert ack["error"]["code"] == "forbidden"
            ack = await a.call("send", {"to": {"user": "boss"}, "event": "hi"})
            assert ack["error"]["code"] == "forbidden"
            ack = await a.call("send", {"to": {"room": "quiet"}, "event": "custom-code"})
            assert ack["error"] == {"code": "muted", "message": "you are muted"}
            ack = await a.call("send", {"to": {"room": "quiet"}, "event": "boom"})
            assert ack["error"]["code"] == "internal"  # refused; the connection goes on
            await a.ok("send", {"to": {"room": "quiet"}, "event": "fine"})
    assert ("alice", Access("join", room=("/", "vip"))) in seen
    assert ("alice", Access("send", users=("boss",), event="hi")) in seen
    assert ("alice", Access("send", room=("/", "quiet"), event="fine")) in seen
    assert node.stats.close_codes[1011] == 0


async def test_cluster_stats_only_for_operators(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(auth={"dev": False})
    with trio.fail_after(5):
        async with connect(node, token=token("alice")) as a:
            ack = await a.call("cluster.stats")
            assert ack["error"] == {"code": "forbidden", "message": "for operators only"}
        async with connect(node, token=token("ops", operator=True)) as ops:
            assert (await ops.ok("cluster.stats"))["mode"] == "none"


@pytest.mark.cluster
async def test_health_names_rooms_only_to_operators() -> None:
    access = {"admin_token": ADMIN}
    with trio.fail_after(20):
        async with embedded_cluster(["n1"], auth={"dev": False}, access=access) as nodes:
            node = nodes["n1"]
            async with connect(node, token=token("alice")) as a:
                await a.ok("room.join", {"room": "private-plans"})
                port = node.port or 0
                for authorization, sees_rooms in (
                    (None, False),
                    (f"Bearer {token('alice')}", False),
                    (f"Bearer {ADMIN[:-1]}", False),
                    (f"Bearer {ADMIN}", True),
                    (f"Bearer {token('ops', operator=True)}", True),
                ):
                    extra = f"Authorization: {authorization}\r\n" if authorization else ""
                    request = f"GET /health HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode()
                    status, _, body = await exchange(port, request)
                    assert status == 200
                    cluster = orjson.loads(body)["cluster"]
                    assert cluster["usersOnline"] == 1
                    assert ("rooms" in cluster) is sees_rooms, authorization
                    assert (b"private-plans" in body) is sees_rooms


async def test_metrics_behind_a_token_and_on_their_own_address(
    start_node: Callable[..., Any],
) -> None:
    metrics_token = "metrics-token-0123456789abcdef01234567"
    guarded: Node = await start_node(metrics={"token": metrics_token})
    apart: Node = await start_node(metrics={"host": "127.0.0.1", "port": 0})
    get = b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n"
    with_token = get.replace(
        b"\r\n\r\n", f"\r\nAuthorization: Bearer {metrics_token}\r\n\r\n".encode()
    )
    with trio.fail_after(5):
        status, headers, _ = await exchange(guarded.port or 0, get)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        status, _, body = await exchange(guarded.port or 0, with_token)
        assert status == 200 and b"roomd_open_connections" in body
        assert apart.metrics_port not in (None, apart.port)
        assert (await exchange(apart.port or 0, get))[0] == 404
        status, _, body = await exchange(apart.metrics_port or 0, get)
        assert status == 200 and b"roomd_open_connections" in body
        health = b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n"
        assert (await exchange(apart.metrics_port or 0, health))[0] == 404
        assert (await exchange(apart.port or 0, health))[0] == 200


def test_short_operator_and_metrics_tokens_are_refused() -> None:
    from tests.support import make_config

    with pytest.raises(ValueError, match=r"access\.admin_token"):
        Node(make_config(access={"admin_token": "short"}))
    with pytest.raises(ValueError, match=r"metrics\.token"):
        Node(make_config(metrics={"token": "short"}))

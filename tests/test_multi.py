"""The multi-server client against real nodes on 127.0.0.1."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest
import trio

from roomd import Context, Node
from roomd.client import (
    ConnectFailed,
    InvalidServer,
    MultiEvent,
    MultiServerClient,
    RoomId,
    ServerChanged,
    ServerPush,
    ServerStatus,
    SyncApplied,
    fetch_health,
    open_multi_client,
)
from tests.test_client import FAST, fast_node, run_node, url

OPTIONS: dict[str, Any] = {"backoff": FAST}


async def serve_http(
    nursery: trio.Nursery, status: str, body: bytes, ctype: str, *, other: str | None = None
) -> int:
    """A plain HTTP server that answers every request with the same response, or only
    ``GET /health`` when ``other`` is the status for every other request (with no body)."""

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        answer, length = status, len(body)
        if other is not None and not data.startswith(b"GET /health "):
            answer, length = other, 0
        head = f"HTTP/1.1 {answer}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
        await stream.send_all(head.encode() + b"Connection: close\r\n\r\n" + body[:length])
        await stream.aclose()

    serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def closed_port() -> int:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


async def next_matching(sub: Any, test: Any) -> Any:
    async for item in sub:
        if test(item):
            return item
    raise AssertionError("subscription ended")


async def test_add_server_refuses_what_is_not_a_roomd_node(nursery: trio.Nursery) -> None:
    html = await serve_http(nursery, "200 OK", b"<html>hi</html>", "text/html")
    missing = await serve_http(nursery, "404 Not Found", b"nope", "text/plain")
    other = {"name": "x", "status": "ok", "version": "9", "protocol": 99, "uptime": 1.0}
    other |= {"connections": 0, "users": 0, "rooms": 0}
    future = await serve_http(nursery, "200 OK", orjson.dumps(other), "application/json")
    nobody = await closed_port()
    with trio.fail_after(5):
        async with open_multi_client(user="alice", client_options=OPTIONS) as multi:
            cases = [
                (html, "did not answer JSON: not a roomd node"),
                (missing, "HTTP 404: not a roomd node"),
                (future, "protocol version 99; this client speaks 1"),
                (nobody, "cannot reach it"),
            ]
            for port, problem in cases:
                with pytest.raises(InvalidServer) as exc:
                    await multi.add_server(url(port))
                assert problem in str(exc.value), exc.value
                assert exc.value.url == url(port)
            assert multi.servers == [] and multi.active is None


async def test_fetch_health_describes_a_node(node: Node) -> None:
    with trio.fail_after(5):
        health = await fetch_health(url(node))
    assert health.name == "test" and health.protocol == 1 and health.status == "ok"


async def test_switch_keeps_connections_and_restores_local_state(
    nursery: trio.Nursery,
) -> None:
    a, b = fast_node(node={"name": "A"}), fast_node(node={"name": "B"})
    await run_node(nursery, a)
    await run_node(nursery, b)
    with trio.fail_after(5):
        async with open_multi_client(user="alice", client_options=OPTIONS) as multi:
            switches = multi.subscribe(MultiEvent.SWITCHED)
            info_a = await multi.add_server(url(a), server_id="a")
            info_b = await multi.add_server(url(b), server_id="b")
            assert (info_a.name, info_b.name) == ("A", "B")
            assert multi.active == "a" and multi.server("a").active
            assert (await switches.receive()).current == "a"
            session_a = multi.client("a").session
            multi.global_state["nickname"] = "Al"
            multi.local_state.update(room="general", draft="hel")

            multi.switch("b")
            assert (await switches.receive()).previous == "a"
            assert multi.local_state == {} and multi.state == {"nickname": "Al"}
            multi.local_state["room"] = "random"
            assert multi.saved_state("a") == {"room": "general", "draft": "hel"}

            multi.switch("a")
            assert multi.local_state == {"room": "general", "draft": "hel"}
            assert multi.state == {"nickname": "Al", "room": "general", "draft": "hel"}
            assert multi.saved_state("b") == {"room": "random"}
            # Neither connection was touched by the switches.
            assert multi.client("a").session == session_a and multi.client("a").reconnects == 0
            assert multi.client("b").connected and multi.client("b").reconnects == 0
            assert a.online_users() == ["alice"] and b.online_users() == ["alice"]
            assert {s.status for s in multi.servers} == {ServerStatus.ONLINE}

            await multi.remove_server("b")
            assert [s.id for s in multi.servers] == ["a"] and multi.client("a").connected
            with pytest.raises(KeyError):
                multi.switch("b")


async def test_room_ids_are_isolated_per_server(nursery: trio.Nursery) -> None:
    a, b = fast_node(node={"name": "A"}), fast_node(node={"name": "B"})
    await run_node(nursery, a)
    await run_node(nursery, b)
    with trio.fail_after(5):
        async with open_multi_client(user="alice", client_options=OPTIONS) as multi:
            await multi.add_server(url(a), server_id="a")
            await multi.add_server(url(b), server_id="b")
            messages = multi.subscribe("message")
            room_a = await multi.join("general")
            room_b = await multi.join("general", server="b")
            assert room_a == RoomId("a", "/", "general") and room_a != room_b
            assert sorted(multi.rooms, key=lambda r: r.server) == [room_a, room_b]
            await multi.client("b").send_text("from b", room="general")
            await multi.client("a").send_text("from a", room="general")
            got = [await messages.receive(), await messages.receive()]
            by_room = {p.room_id: p.push.data["payload"]["content"] for p in got}
            assert by_room == {room_b: "from b", room_a: "from a"}
            assert all(isinstance(p, ServerPush) for p in got)
            await multi.leave(room_a)
            assert multi.rooms == [room_b]
            assert b.room_members("general") == ["alice"] and a.room_members("general") == []


async def test_sync_state_is_queued_for_a_failing_server_and_applied_on_return(
    nursery: trio.Nursery,
) -> None:
    a = fast_node(node={"name": "A"})
    b = fast_node(node={"name": "B"})
    await run_node(nursery, a)
    b_done = await run_node(nursery, b)
    port_b = b.port
    assert port_b is not None
    with trio.fail_after(10):
        async with open_multi_client(
            user="alice", client_options=OPTIONS, health_interval=0.05
        ) as multi:
            changes = multi.subscribe(MultiEvent.CHANGED)
            synced = multi.subscribe(MultiEvent.SYNCED)
            await multi.add_server(url(a), server_id="a")
            await multi.add_server(url(b), server_id="b")
            await next_matching(changes, lambda c: c.info.id == "b" and c.info.users == 1)
            await multi.join("lobby", server="a")
            await multi.join("lobby", server="b")

            async def status_on(server: str) -> str:
                members = await multi.client(server).members("lobby")
                return str(members[0]["status"])

            b.shutdown()
            await b_done.wait()
            offline: ServerChanged = await next_matching(
                changes, lambda c: c.info.id == "b" and c.info.status is ServerStatus.OFFLINE
            )
            assert "1001" in (offline.info.last_error or "")

            outcomes = await multi.sync_state(status="away", status_text="lunch", nickname="Al")
            assert outcomes["a"].result == "applied"
            assert outcomes["b"].result == "queued"
            assert outcomes["a"].local == outcomes["b"].local == ("nickname",)  # no state_event
            assert await status_on("a") == "away"
            assert multi.pending_sync("b") == {"status": "away", "status_text": "lunch"}
            assert multi.pending_sync("a") == {}

            again = fast_node(node={"name": "B", "port": port_b})
            await run_node(nursery, again)
            applied: SyncApplied = await next_matching(synced, lambda s: s.server == "b")
            assert applied.fields["status"] == "away"
            assert await status_on("b") == "away"  # the room was re-joined too
            assert multi.pending_sync("b") == {}
            online = await next_matching(
                changes, lambda c: c.info.id == "b" and c.info.status is ServerStatus.ONLINE
            )
            assert online.info.latency is None or online.info.latency >= 0


async def test_sync_state_is_retried_while_the_server_is_online(node: Node) -> None:
    """A server that is online but does not answer in time gets the change again, with backoff,
    without waiting for a reconnect."""
    received: list[Any] = []
    release = trio.Event()

    @node.on("profile")
    async def profile(ctx: Context, data: Any) -> None:
        received.append(data)
        if len(received) == 1:
            await release.wait()  # too slow for the first sync

    with trio.fail_after(10):
        async with open_multi_client(
            user="alice",
            client_options=OPTIONS,
            state_event="profile",
            sync_timeout=0.1,
            sync_backoff=FAST,
        ) as multi:
            synced = multi.subscribe(MultiEvent.SYNCED)
            changes = multi.subscribe(MultiEvent.CHANGED)
            await multi.add_server(url(node), server_id="a")
            # Once the user count is refreshed, the connect's own sync (of nothing) is over.
            await next_matching(changes, lambda c: c.info.users == 1)
            outcomes = await multi.sync_state(nickname="Al")
            assert outcomes["a"].result == "queued" and "0.1 s" in (outcomes["a"].error or "")
            assert multi.pending_sync("a") == {"nickname": "Al"}
            release.set()
            applied: SyncApplied = await synced.receive()
            assert (applied.server, applied.fields) == ("a", {"nickname": "Al"})
            assert multi.pending_sync("a") == {} and multi.client("a").reconnects == 0
            assert received == [{"nickname": "Al"}, {"nickname": "Al"}]


async def test_sync_state_reports_local_fields_and_stopped_servers(
    nursery: trio.Nursery,
) -> None:
    a, b = fast_node(node={"name": "A"}), fast_node(node={"name": "B"})
    await run_node(nursery, a)
    await run_node(nursery, b)
    with trio.fail_after(5):
        async with open_multi_client(user="alice", client_options=OPTIONS) as multi:
            changes = multi.subscribe(MultiEvent.CHANGED)
            await multi.add_server(url(a), server_id="a")
            await multi.add_server(url(b), server_id="b")
            outcomes = await multi.sync_state(nickname="Al", draft="x")
            assert {o.result for o in outcomes.values()} == {"local"}  # sent nowhere
            assert outcomes["a"].local == ("nickname", "draft")
            assert multi.global_state == {"nickname": "Al", "draft": "x"}

            assert b.kick("alice") == 1  # terminal: b stops for good
            await next_matching(
                changes, lambda c: c.info.id == "b" and c.info.status is ServerStatus.ERROR
            )
            outcomes = await multi.sync_state(status="away")
            assert outcomes["a"].result == "applied" and outcomes["a"].local == ()
            assert outcomes["b"].result == "failed" and "4010" in (outcomes["b"].error or "")
            assert multi.pending_sync("b") == {}


async def test_add_server_gives_up_when_the_websocket_never_opens(nursery: trio.Nursery) -> None:
    """/health answers like a node, but every WebSocket upgrade is refused with 503 (a status
    that means "try again later")."""
    health = {"name": "x", "status": "ok", "version": "1", "protocol": 1, "uptime": 1.0}
    health |= {"connections": 0, "users": 0, "rooms": 0}
    port = await serve_http(
        nursery, "200 OK", orjson.dumps(health), "application/json", other="503 Unavailable"
    )
    with trio.fail_after(5):
        async with open_multi_client(
            user="alice", client_options=OPTIONS, connect_timeout=0.5
        ) as multi:
            with pytest.raises(ConnectFailed) as exc:
                await multi.add_server(url(port))
            assert "no WebSocket connection opened within 0.5 s" in str(exc.value)
            assert exc.value.close_code == 1013 and "HTTP 503" in exc.value.reason
            assert multi.servers == [] and multi.active is None


async def test_latency_is_reported_as_a_change(node: Node) -> None:
    options = {"backoff": FAST, "heartbeat_interval": 0.02}
    with trio.fail_after(5):
        async with open_multi_client(user="alice", client_options=options) as multi:
            changes = multi.subscribe(MultiEvent.CHANGED)
            await multi.add_server(url(node))
            change = await next_matching(changes, lambda c: "latency" in c.changed)
            assert 0 < change.info.latency < 1


async def test_add_server_needs_a_running_client() -> None:
    multi = MultiServerClient()
    with pytest.raises(RuntimeError):
        await multi.add_server("ws://127.0.0.1:1")

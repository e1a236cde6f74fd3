"""The opening handshake is strict (RFC 6455 section 4.2.1, RFC 9110 and 9112), and every
HTTP answer is safe to show a browser."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from wsproto.events import AcceptConnection, TextMessage

from roomd import Node
from roomd.node import mint_token
from tests.support import SECRET, make_config, silent_websocket, upgrade


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request; the answer's status, headers (lower-case names) and body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.startswith(b"HTTP/1.1 101"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def without(request: bytes, header: bytes) -> bytes:
    return b"\r\n".join(line for line in request.split(b"\r\n") if not line.startswith(header))


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (upgrade("/ws?user=a").replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
        (without(upgrade("/ws?user=a"), b"Host:"), 400),
        (upgrade("/ws?user=a", "Host: second.example"), 400),
        (upgrade("/ws?user=a").replace(b"Upgrade: websocket", b"Upgrade: websocketx"), 400),
        (upgrade("/ws?user=a").replace(b"Upgrade: websocket", b"Upgrade: xwebsocket"), 400),
        (upgrade("/ws?user=a").replace(b"Upgrade: websocket", b"Upgrade: h2c, WebSocket"), 101),
        (upgrade("/ws?user=a").replace(b"Connection: Upgrade", b"Connection: x, upgrade"), 101),
        (upgrade("/ws?user=a"), 101),
    ],
    ids=["http-1.0", "no-host", "two-hosts", "websocketx", "xwebsocket", "list", "conn", "ok"],
)
async def test_upgrades_the_rfcs_refuse_are_refused(
    node: Node, request_: bytes, status: int
) -> None:
    with trio.fail_after(5):
        got, headers, body = await exchange(node.port or 0, request_)
    assert got == status, body
    if status != 101:
        assert headers["content-type"] == "application/json"
        assert orjson.loads(body)["error"]
        assert node.stats.connections_total == 0


async def test_plain_http_1_0_needs_no_host(node: Node) -> None:
    with trio.fail_after(5):
        status, _, body = await exchange(node.port or 0, b"GET /health HTTP/1.0\r\n\r\n")
    assert status == 200 and orjson.loads(body)["status"] == "ok"


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n", 200),
        (b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n", 200),
        (b"GET /<script>alert(1)</script> HTTP/1.1\r\nHost: h\r\n\r\n", 404),
        (upgrade("/<script>?user=a"), 404),
        (b"POST /health HTTP/1.1\r\nHost: h\r\n\r\n", 405),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", 426),
        (b"GET /ws HTTP/1.1\r\n\r\n", 400),
        (upgrade("/ws"), 401),
    ],
)
async def test_every_answer_says_nosniff_and_echoes_no_path(
    start_node: Callable[..., Any], request_: bytes, status: int
) -> None:
    node: Node = await start_node(auth={"dev": False})
    with trio.fail_after(5):
        got, headers, body = await exchange(node.port or 0, request_)
    assert got == status
    assert headers["x-content-type-options"] == "nosniff"
    if request_.startswith(b"GET /metrics"):
        assert headers["content-type"].startswith("text/plain")
    else:
        assert headers["content-type"] == "application/json"
        orjson.loads(body)
    assert b"script" not in body


@pytest.mark.parametrize(
    "query",
    [
        "?token=not-a-jwt",
        "?token=" + mint_token("another-secret-of-sufficient-length!", "alice", 3600),
        "?token=" + mint_token(SECRET, "alice", 3600)[:-4],  # a broken signature
        "?token=" + mint_token(SECRET, "\u202eecila", 3600),  # a name that hides what it is
    ],
)
async def test_401_bodies_are_generic_and_failures_are_logged_without_the_token(
    start_node: Callable[..., Any], caplog: pytest.LogCaptureFixture, query: str
) -> None:
    node: Node = await start_node(auth={"dev": False})
    caplog.set_level(logging.INFO, logger="roomd.node")
    with trio.fail_after(5):
        status, headers, body = await exchange(node.port or 0, upgrade(f"/ws{query}"))
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="roomd"'
    assert orjson.loads(body) in ({"error": "invalid token"}, {"error": "invalid user name"})
    refusals = [r.getMessage() for r in caplog.records if "sign-in refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "127.0.0.1" in refusals[0]
    assert "(" in refusals[0] or "user" in refusals[0]  # a reason beyond the public message
    token = query.removeprefix("?token=")
    assert token not in refusals[0] and token[-20:] not in refusals[0]


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Node(make_config(auth={"secret": "a", "dev": False}))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Node(make_config(auth={"secret": "x" * 31, "dev": False}))
    Node(make_config(auth={"secret": "x" * 32, "dev": False}))


class _Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def _answer_to(sock: socket.socket) -> bytes:
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, data
        data += chunk
    await stream.aclose()
    return data


async def test_an_upgrade_whose_request_came_with_the_connection_needs_no_task(node: Node) -> None:
    """The usual case, answered where it is accepted: no task, no wait."""
    spawns = _Spawns()
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(spawns)
        try:
            sock = socket.create_connection(("127.0.0.1", node.port or 0))
            sock.sendall(upgrade("/ws?user=a"))  # (no checkpoint since the connect)
            answer = await _answer_to(sock)
        finally:
            trio.lowlevel.remove_instrument(spawns)
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert spawns.count == 0


async def test_a_request_head_in_two_parts_is_read_whole(node: Node) -> None:
    request = upgrade("/ws?user=a")
    with trio.fail_after(5):
        sock = socket.create_connection(("127.0.0.1", node.port or 0))
        sock.sendall(request[:20])
        await trio.testing.wait_all_tasks_blocked()  # accepted, and waiting for the rest
        sock.sendall(request[20:])
        assert (await _answer_to(sock)).startswith(b"HTTP/1.1 101 ")


async def test_a_101_the_kernel_takes_in_part_is_finished(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a fresh socket take only part of the answer, a task writes the rest, and the
    connection serves as any other."""
    parts: list[int] = []

    def send_part(sock: socket.socket, data: bytes) -> int:
        parts.append(len(data))
        return sock.send(data[:7])

    monkeypatch.setattr("roomd.node._node.send_now", send_part)
    with trio.fail_after(5):
        sock = socket.create_connection(("127.0.0.1", node.port or 0))
        sock.setblocking(False)
        stream, ws = await silent_websocket(
            0, "?user=alice", sock=trio.socket.from_stdlib_socket(sock)
        )
        async with stream:
            events: list[Any] = []
            while not events:
                ws.receive_data(await stream.receive_some(65536))
                events += ws.events()
            await stream.send_all(ws.send(TextMessage('{"type":"hello","v":1}')))
            while not any(isinstance(e, TextMessage) for e in events):
                ws.receive_data(await stream.receive_some(65536))
                events += ws.events()
    assert isinstance(events[0], AcceptConnection)
    (welcome,) = [orjson.loads(e.data) for e in events if isinstance(e, TextMessage)]
    assert welcome["type"] == "welcome" and welcome["user"] == "alice"
    assert parts and parts[0] > 7


async def test_a_defect_in_the_handshake_drops_only_that_connection(
    node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("a defect")

    with trio.fail_after(5):
        monkeypatch.setattr(node, "_answer", boom)
        sock = socket.create_connection(("127.0.0.1", node.port or 0))
        sock.sendall(upgrade("/ws?user=a"))
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        assert await stream.receive_some(65536) == b""  # dropped
        await stream.aclose()
        monkeypatch.undo()
        got, _, _ = await exchange(node.port or 0, upgrade("/ws?user=b"))
    assert got == 101
    assert "handshake failed; the connection is dropped" in caplog.text
    assert node.admission.handshaking == 0


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="Linux's TCP_DEFER_ACCEPT")
async def test_a_connection_is_taken_once_its_request_has_come(node: Node) -> None:
    """The kernel hands a connection over once its first bytes are in: a client that connects
    and only then sends its request is still answered at once, without a task."""
    spawns = _Spawns()
    with trio.fail_after(5):
        trio.lowlevel.add_instrument(spawns)
        try:
            sock = socket.create_connection(("127.0.0.1", node.port or 0))
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # (the node is idle)
            sock.sendall(upgrade("/ws?user=a"))
            answer = await _answer_to(sock)
        finally:
            trio.lowlevel.remove_instrument(spawns)
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert spawns.count == 0

"""Test helpers: a raw-protocol WebSocket client and node configuration."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from roomd import Config, Node
from roomd._config import config_from_dict

SECRET = "test-secret-0123456789abcdef0123456789"


def make_config(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "node": {"name": "test", "host": "127.0.0.1", "port": 0},
        "auth": {"secret": SECRET, "dev": True},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def upgrade(path: str, *headers: str) -> bytes:
    """A WebSocket upgrade request's head, for tests that speak HTTP by hand."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawClient:
    """A test client speaking the wire protocol over a real WebSocket (trio-websocket)."""

    def __init__(self, ws: WebSocketConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.welcome: dict[str, Any] = {}
        self.backlog: collections.deque[dict[str, Any]] = collections.deque()
        self._next_id = 0

    async def send(self, frame: dict[str, Any]) -> None:
        if self.binary:
            await self.ws.send_message(msgpack.packb(frame))
        else:
            await self.ws.send_message(orjson.dumps(frame).decode())

    async def recv(self) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.popleft()
        raw = await self.ws.get_message()
        if self.binary:
            assert isinstance(raw, bytes), "binary connection got a text frame"
            frame: dict[str, Any] = msgpack.unpackb(raw)
        else:
            assert isinstance(raw, str), "text connection got a binary frame"
            frame = orjson.loads(raw)
        return frame

    async def hello(self, v: int = 1) -> dict[str, Any]:
        await self.send({"type": "hello", "v": v})
        self.welcome = await self.expect("welcome")
        return self.welcome

    async def expect(self, type_: str, **match: Any) -> dict[str, Any]:
        """The next frame of ``type_`` (matching ``match``); other frames are kept for later."""
        skipped: list[dict[str, Any]] = []
        for _ in range(10_000):
            frame = await self.recv()
            if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
                self.backlog.extendleft(reversed(skipped))
                return frame
            skipped.append(frame)
        raise AssertionError(f"no {type_} frame")

    async def call(self, event: str, data: Any = None, **extra: Any) -> dict[str, Any]:
        """Send an event with an id and return its ack frame."""
        self._next_id += 1
        await self.send(
            {"type": "event", "id": self._next_id, "event": event, "data": data, **extra}
        )
        return await self.expect("ack", id=self._next_id)

    async def ok(self, event: str, data: Any = None, **extra: Any) -> Any:
        ack = await self.call(event, data, **extra)
        assert "error" not in ack, ack
        return ack.get("result")

    async def push(self, event: str | None = None) -> dict[str, Any]:
        match = {} if event is None else {"event": event}
        return await self.expect("push", **match)

    async def closed(self) -> tuple[int | None, str | None]:
        """Read until the node closes the connection; its close code and reason."""
        for _ in range(100_000):
            try:
                await self.ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code, exc.reason.reason
        raise AssertionError("connection not closed")


@asynccontextmanager
async def connect(
    node: Node,
    user: str | None = "alice",
    *,
    token: str | None = None,
    binary: bool = False,
    hello: bool = True,
    path: str = "/ws",
    headers: list[tuple[str, str]] | None = None,
) -> AsyncIterator[RawClient]:
    query = f"?token={token}" if token else (f"?user={user}" if user else "")
    host = node.config.node.host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    url = f"ws://{host}:{node.port}{path}{query}"
    async with open_websocket_url(url, extra_headers=headers or [], message_queue_size=1024) as ws:
        client = RawClient(ws, binary)
        if hello:
            await client.hello()
        yield client


async def silent_websocket(
    port: int, query: str = "?user=mute", *, sock: Any = None
) -> tuple[Any, Any]:
    """A WebSocket that completes the upgrade and then neither reads nor answers anything
    (over ``sock``, a connected trio socket, if given).

    Returns the TCP stream and a wsproto client connection to parse what arrives.
    """
    import trio
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request

    if sock is not None:
        stream = trio.SocketStream(sock)
    else:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target=f"/ws{query}")))
    return stream, ws


async def read_until_close(stream: Any, ws: Any) -> tuple[int | None, list[Any]]:
    """Parse frames until the node's close frame or EOF; the close code and the events seen."""
    from wsproto.events import CloseConnection

    events: list[Any] = []
    for _ in range(100_000):
        data = await stream.receive_some(65536)
        if not data:
            return None, events
        ws.receive_data(data)
        for event in ws.events():
            events.append(event)
            if isinstance(event, CloseConnection):
                return event.code, events
    raise AssertionError("no close")


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once ``predicate()`` holds; raise ``trio.TooSlowError`` after ``timeout`` seconds.

    For conditions that nothing can be awaited for (a counter of another process, a node's
    internal state); it checks every 5 ms.
    """
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 (nothing to await: a polled condition)
            await trio.sleep(0.005)

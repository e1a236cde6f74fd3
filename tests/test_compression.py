"""permessage-deflate on a real node: negotiated when offered and allowed, one compression per
push whatever the number of recipients, plain below the threshold, and the Trio client uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

import roomd.ws._deflate
from roomd import Node
from roomd.client import open_client
from tests.support import connect


class WireClient:
    """A wsproto client over a TCP stream that keeps the raw bytes it received."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream, self.ws = stream, ws
        self.wire = b""
        self.accepted: AcceptConnection | None = None
        self.pending: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(orjson.dumps(frame).decode())))

    async def receive(self) -> None:
        data = await self.stream.receive_some(65536)
        assert data, "connection closed"
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = event
            elif isinstance(event, TextMessage):
                self.wire += data
                self.pending.append(orjson.loads(event.data))

    async def recv(self) -> dict[str, Any]:
        while not self.pending:
            await self.receive()
        return self.pending.pop(0)

    async def expect(self, type_: str, event: str | None = None) -> dict[str, Any]:
        while True:
            frame = await self.recv()
            if frame["type"] == type_ and event in (None, frame.get("event")):
                return frame


@asynccontextmanager
async def wire_client(node: Node, user: str, *, deflate: bool) -> AsyncIterator[WireClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", node.port or 0)
    async with stream:
        ws = WSConnection(ConnectionType.CLIENT)
        extensions = [PerMessageDeflate()] if deflate else []
        request = Request(host="127.0.0.1", target=f"/ws?user={user}", extensions=extensions)
        client = WireClient(stream, ws)
        await stream.send_all(ws.send(request))
        while client.accepted is None:
            await client.receive()
        await client.send({"type": "hello", "v": 1})
        await client.expect("welcome")
        yield client


def counting_compress(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = roomd.ws._deflate.compress

    def spy(data: bytes, bits: int, level: int) -> bytes:
        calls.append(len(data))
        return real(data, bits, level)

    monkeypatch.setattr(roomd.ws._deflate, "compress", spy)
    return calls


async def test_a_push_is_compressed_once_for_every_recipient(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_compress(monkeypatch)
    text = "all work and no play makes jack a dull boy. " * 80  # 3,600 characters
    with trio.fail_after(5):
        async with (
            wire_client(node, "a", deflate=True) as a,
            wire_client(node, "b", deflate=True) as b,
            wire_client(node, "c", deflate=True) as c,
            wire_client(node, "plain", deflate=False) as plain,
        ):
            assert a.accepted is not None
            assert a.accepted.extensions[0].name == "permessage-deflate"  # type: ignore[union-attr]
            assert plain.accepted is not None and plain.accepted.extensions == []
            for k, client in enumerate((a, b, c, plain)):
                await client.send(
                    {"type": "event", "id": k, "event": "room.join", "data": {"room": "r"}}
                )
                await client.expect("ack")
            calls.clear()
            for client in (b, c, plain):
                client.wire = b""
            message = {"type": "text", "payload": {"content": text}}
            send = {"to": {"room": "r"}, "data": message, "exceptSelf": True}
            await a.send({"type": "event", "id": 9, "event": "send", "data": send})
            pushes = [await client.expect("push", "message") for client in (b, c, plain)]
            assert {p["data"]["payload"]["content"] for p in pushes} == {text}
            assert [p["seq"] for p in pushes] == [3, 2, 1]  # each its own seq, in front
            assert len(calls) == 1 and calls[0] > len(text)  # once, for three recipients
            # On the wire: compressed for b and c (a few hundred bytes), plain for the other.
            assert len(b.wire) < 2000 and len(c.wire) < 2000
            assert len(plain.wire) > len(text)


async def test_small_frames_stay_plain_and_clients_may_compress(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_compress(monkeypatch)
    with trio.fail_after(5):
        async with wire_client(node, "a", deflate=True) as a:
            # wsproto compresses everything it sends: the node inflates it.
            await a.send({"type": "event", "id": 1, "event": "users.online", "data": {}})
            assert (await a.expect("ack"))["result"] == {"users": ["a"]}
            await a.send({"type": "ping", "ts": 5})
            assert (await a.expect("pong"))["ts"] == 5
    assert calls == []  # every answer was under the threshold


async def test_compression_can_be_disabled(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(compression={"enabled": False})
    with trio.fail_after(5):
        async with wire_client(node, "a", deflate=True) as a:
            assert a.accepted is not None and a.accepted.extensions == []
            await a.send({"type": "ping", "ts": 1})
            await a.expect("pong")


async def test_the_trio_client_negotiates_it(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(compression={"threshold": 64})
    big = "x" * 4000
    url = f"ws://127.0.0.1:{node.port}"
    with trio.fail_after(5):
        async with open_client(url, user="alice") as alice, open_client(url, user="bob") as bob:
            await alice.join("r")
            await bob.join("r")
            assert all(conn.deflate is not None for conn in node.hub.connections.values())
            with bob.subscribe("message") as messages:
                await alice.send_text(big, room="r")
                async for push in messages:
                    assert push.data["payload"]["content"] == big
                    break
        async with open_client(url, user="carol", compress=False) as carol:
            await carol.join("r")
            (conn,) = node.hub.users["carol"]
            assert conn.deflate is None
            async with connect(node, "dave") as dave:  # trio-websocket alone offers nothing
                assert node.hub.users["dave"][0].deflate is None
                await dave.ok("room.join", {"room": "r"})

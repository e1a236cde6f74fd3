"""No input takes a node down: deep nesting anywhere, any frame type, any built-in event.

Each property example starts a real node, sends hostile frames over a real WebSocket, then
checks that the node handled every one without an unexpected failure (no 1011, nothing logged as
failed) and still serves a fresh client.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto.events import Ping, TextMessage

from roomd import Node
from roomd.node import BUILTIN_EVENTS
from tests.support import connect, make_config, read_until_close, silent_websocket, wait_until

PLACEHOLDER = "\x00deep\x00"


def nested_json(kind: str, depth: int) -> bytes:
    """``depth`` levels of objects, arrays or both, as JSON text (built without recursion)."""
    if kind == "dict":
        return b'{"a":' * depth + b"null" + b"}" * depth
    if kind == "list":
        return b"[" * depth + b"]" * depth
    half = depth // 2
    return b'{"a":[' * half + b"1" + b"]}" * half


def nested_msgpack(kind: str, depth: int) -> bytes:
    if kind == "dict":
        return b"\x81\xa1a" * depth + b"\xc0"  # fixmap of one entry "a": ...
    if kind == "list":
        return b"\x91" * depth + b"\xc0"  # fixarray of one item
    half = depth // 2
    return b"\x81\xa1a\x91" * half + b"\x01"


def encode(frame: dict[str, Any], deep: tuple[str, int] | None, binary: bool) -> bytes:
    """``frame`` encoded, with the deep value spliced in where it holds :data:`PLACEHOLDER`."""
    if binary:
        raw: bytes = msgpack.packb(frame)
        if deep is not None:
            raw = raw.replace(msgpack.packb(PLACEHOLDER), nested_msgpack(*deep))
        return raw
    raw = orjson.dumps(frame)
    if deep is not None:
        raw = raw.replace(orjson.dumps(PLACEHOLDER), nested_json(*deep))
    return raw


CHAT = {"type": "text", "payload": {"content": "hi"}}


def frames_holding(value: Any) -> list[dict[str, Any]]:
    """Every frame type, every built-in event and every ``Any`` field, holding ``value``."""
    event = {"type": "event", "id": 7}
    frames: list[dict[str, Any]] = [
        {"type": "hello", "v": 1, "client": value},
        {"type": "hello", "v": 1, "resume": value},
        {"type": "hello", "v": value},
        {"type": "ack", "id": 1, "result": value},
        {"type": "ack", "id": 1, "error": value},
        {"type": "ping", "ts": value},
        {"type": "ping", "ts": 1.0, "unknown": value},
        {"type": value},
        {**event, "event": "custom", "data": value},
        {**event, "event": "custom", "data": {"x": value}, "cmid": "c1"},
        {**event, "event": value},
        {"type": "event", "id": value, "event": "users.online"},
        {
            **event,
            "event": "send",
            "data": {"to": {"room": "r"}, "data": {**CHAT, "metadata": value}},
        },
        {
            **event,
            "event": "send",
            "data": {"to": {"room": "r"}, "data": {**CHAT, "payload": value}},
        },
        {**event, "event": "send", "data": {"to": {"user": "bob"}, "event": "x", "data": value}},
        {**event, "event": "send", "data": {"to": {"users": ["bob"]}, "event": "x", "data": value}},
        {**event, "event": "send", "data": {"to": value, "data": CHAT}},
        {**event, "event": "send", "data": {"to": {"room": "r"}, "ack": True, "data": value}},
    ]
    for name in sorted(BUILTIN_EVENTS):
        frames.append({**event, "event": name, "data": value})
        frames.append({**event, "event": name, "data": {"room": "r", "extra": value}})
    return frames


DEPTHS = st.one_of(st.integers(1, 40), st.sampled_from([254, 255, 256, 327, 600, 1100, 5000]))
DEEP = st.tuples(st.sampled_from(["dict", "list", "mixed"]), DEPTHS)
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def hostile_frames(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One frame: a template of :func:`frames_holding` with a deep or an odd value in it."""
    binary = draw(st.booleans())
    deep = draw(st.none() | DEEP)
    value = PLACEHOLDER if deep is not None else draw(JSONISH)
    frame = draw(st.sampled_from(frames_holding(value)))
    return encode(frame, deep, binary), binary


async def run_hostile(frames: list[tuple[bytes, bool]], hello_first: bool) -> Node:
    node = Node(make_config(limits={"rate": 10_000.0, "burst": 10_000}))

    @node.on("custom")
    async def custom(ctx: Any, data: Any) -> Any:
        return data

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            url = f"ws://127.0.0.1:{node.port}/ws?user=mallory"
            async with open_websocket_url(url, message_queue_size=4096) as ws:
                if hello_first:
                    await ws.send_message('{"type":"hello","v":1}')
                    await ws.send_message(
                        '{"type":"event","event":"room.join","data":{"room":"r"}}'
                    )
                try:
                    for raw, binary in frames:
                        await ws.send_message(raw if binary else raw.decode())
                    # Every frame handled: the last one's answer (or the close) is back.
                    await ws.send_message('{"type":"event","id":424242,"event":"users.online"}')
                    while _frame_id(await ws.get_message()) != 424242:
                        pass
                except ConnectionClosed:
                    pass  # some frames close the connection (a bad hello): never with 1011
            async with connect(node, "fresh") as fresh:
                assert await fresh.ok("users.online", {}) == {"users": ["fresh"]}
            node.shutdown()
    return node


def _frame_id(message: bytes | str) -> Any:
    frame = msgpack.unpackb(message) if isinstance(message, bytes) else orjson.loads(message)
    return frame.get("id") if isinstance(frame, dict) else None


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_every_frame_and_event_with_deep_nesting_in_every_field(binary: bool) -> None:
    """Exhaustively: every template of :func:`frames_holding`, nested just over the limit, at
    the depth that killed a node (327), and beyond the parsers' own limits."""
    frames = [
        (encode(frame, (kind, depth), binary), binary)
        for depth in (33, 327, 1100)
        for kind in ("dict", "list", "mixed")
        for frame in frames_holding(PLACEHOLDER)
    ]
    node = trio.run(run_hostile, frames, True)
    assert node.stats.close_codes[1011] == 0
    assert node.stats.errors["internal"] == 0
    assert node.stats.errors["bad_frame"] >= len(frames) - 1  # all but the deep bad hello


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames=st.lists(hostile_frames(), min_size=1, max_size=12), hello_first=st.booleans())
def test_no_frame_takes_the_node_down(frames: list[tuple[bytes, bool]], hello_first: bool) -> None:
    node = trio.run(run_hostile, frames, hello_first)
    assert node.stats.close_codes[1011] == 0  # every frame had an answer, not an accident
    assert node.stats.errors["internal"] == 0


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_deep_chat_metadata_is_refused_and_the_connection_goes_on(
    start_node: Callable[..., Any], binary: bool
) -> None:
    """The frame that killed a node: a ``send`` whose chat metadata nests 327 levels."""
    node: Node = await start_node()
    frame = {"type": "event", "id": 5, "event": "send"}
    frame["data"] = {"to": {"room": "r"}, "data": {**CHAT, "metadata": PLACEHOLDER}}
    with trio.fail_after(5):
        async with connect(node, "alice", binary=binary) as alice:
            await alice.ok("room.join", {"room": "r"})
            raw = encode(frame, ("dict", 327), binary)
            await alice.ws.send_message(raw if binary else raw.decode())
            error = await alice.expect("error", ref=5)
            assert error["code"] == "bad_frame"
            assert "nested deeper than 32 levels" in error["message"]
            assert await alice.ok("users.online", {}) == {"users": ["alice"]}
    assert node.stats.close_codes[1011] == 0


async def test_nesting_limit_is_configurable(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(limits={"max_depth": 8})
    shallow = {"type": "event", "id": 1, "event": "echo", "data": PLACEHOLDER}

    @node.on("echo")
    async def echo(ctx: Any, data: Any) -> Any:
        return data

    with trio.fail_after(5):
        async with connect(node, "alice") as alice:
            await alice.ws.send_message(encode(shallow, ("dict", 7), False).decode())
            assert "result" in await alice.expect("ack", id=1)  # the frame and 7: 8 levels
            shallow["id"] = 2
            await alice.ws.send_message(encode(shallow, ("dict", 8), False).decode())
            assert (await alice.expect("error", ref=2))["code"] == "bad_frame"


async def test_a_failing_frame_closes_only_its_connection_1011(
    start_node: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A defect met while handling a frame ends that connection, with a reference the client
    is told and the log holds; everyone else is served on."""
    node: Node = await start_node()

    def broken(conn: Any, data: Any, cmid: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setitem(node._dispatch.builtins.table, "users.online", broken)
    with trio.fail_after(5), caplog.at_level(logging.ERROR, logger="roomd.node"):
        async with connect(node, "bob") as bob, connect(node, "alice") as alice:
            await alice.send({"type": "event", "id": 1, "event": "users.online"})
            error = await alice.expect("error")
            assert error["code"] == "internal"
            code, reason = await alice.closed()
            assert code == 1011
            ref = reason.split("ref ")[1].rstrip(")")
            assert ref in error["message"]
            assert any(ref in r.getMessage() for r in caplog.records)
            monkeypatch.undo()
            # Still served; alice's session waits to be resumed (1011 asks her to reconnect).
            assert await bob.ok("users.online", {}) == {"users": ["alice", "bob"]}


async def _flood_pings(node: Node, count: int) -> tuple[Any, Any]:
    """A client that says hello, then sends ``count`` 125-byte pings and never reads."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", node.port or 0))
    stream, ws = await silent_websocket(node.port or 0, "?user=pinger", sock=sock)
    ws.receive_data(await stream.receive_some(65536))  # the 101
    list(ws.events())
    await stream.send_all(ws.send(TextMessage('{"type":"hello","v":1}')))
    ping = ws.send(Ping(b"p" * 125))
    for _ in range(count // 1000):
        await stream.send_all(ping * 1000)
    return stream, ws


async def test_pings_from_a_client_that_never_reads_cost_no_memory(
    start_node: Callable[..., Any],
) -> None:
    """Pongs not yet written are replaced by the latest: 5 MB of pings that are never read
    leave at most one pong queued (before, every pong stayed queued)."""
    node: Node = await start_node(limits={"rate": 1e6, "burst": 10**6})
    with trio.fail_after(20):
        stream, ws = await _flood_pings(node, 40_000)
        async with stream:
            await stream.send_all(ws.send(TextMessage('{"type":"event","event":"users.online"}')))
            await wait_until(lambda: node.stats.frames_in >= 2)  # the pings are behind us
            (pinger,) = node._connected
            assert pinger.outlet.queued_bytes < 4096  # type: ignore[attr-defined]
            async with connect(node, "other") as other:
                assert await other.ok("users.online", {}) == {"users": ["other", "pinger"]}


async def test_a_ping_flood_counts_in_the_rate_and_closes_4009(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node(limits={"rate": 50.0, "burst": 100, "max_strikes": 10})
    with trio.fail_after(10):
        stream, ws = await _flood_pings(node, 10_000)
        async with stream:
            code, _events = await read_until_close(stream, ws)
    assert code == 4009
    async with connect(node, "other") as other:  # (pinger's session waits to be resumed)
        assert await other.ok("users.online", {}) == {"users": ["other", "pinger"]}

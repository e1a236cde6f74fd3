"""RFC 6455 and RFC 7692 conformance of a real node, case by case, modelled on the families of
the Autobahn testsuite that apply to a server speaking its own protocol over WebSocket (the
node is no echo server: a message is a protocol frame, so each case sends frames and checks
what the node answers and how it closes):

1 framing · 2 pings and pongs · 3 reserved bits · 4 opcodes · 5 fragmentation · 6 UTF-8 ·
7 closing · 9 limits · 12 and 13 permessage-deflate (messages, and the negotiated parameters).

Every case sends a valid ``hello`` first, then the case's bytes, then a sentinel ``ping`` in the
same write; it reads until the node closes or answers the sentinel, so a case never waits on a
timer. A case that breaks the protocol must also get the answers to the valid frames before
the violation (nothing queued is dropped by the close).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest
import trio
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomd import Node
from tests.support import upgrade

HELLO = b'{"type":"hello","v":1}'
SENTINEL_TS = 424242
MAX = 65536  # the node's limits.max_frame_bytes in these tests


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame, built by hand so that it can break any rule."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text(data: bytes, **kw: Any) -> bytes:
    return frame(0x1, data, **kw)


def ping_json(ts: int, size: int = 0) -> bytes:
    """A protocol ping padded (with an unknown field) to ``size`` bytes of JSON."""
    body = b'{"type":"ping","ts":%d,"pad":"' % ts
    return body + b"x" * max(0, size - len(body) - 2) + b'"}'


def ping_msgpack(ts: int, size: int) -> bytes:
    body = msgpack.packb({"type": "ping", "ts": ts, "pad": b""})
    return msgpack.packb({"type": "ping", "ts": ts, "pad": b"x" * max(0, size - len(body) - 2)})


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


class Outcome:
    def __init__(self) -> None:
        self.messages: list[Any] = []  # decoded data messages, in order
        self.pongs: list[bytes] = []  # WebSocket pong payloads
        self.close: int | None = None  # the node's close code (None: still open)
        self.compressed = 0  # data frames that arrived with RSV1


async def run_case(
    node: Node, data: bytes, *, extensions: str | None = None, answer: str | None = None
) -> Outcome:
    """Upgrade, say hello, send ``data`` and a sentinel; what the node answered."""
    headers = (f"Sec-WebSocket-Extensions: {extensions}",) if extensions else ()
    stream = await trio.open_tcp_stream("127.0.0.1", node.port or 0)
    out = Outcome()
    async with stream:
        await stream.send_all(upgrade("/ws?user=conformance", *headers))
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        accepted = ""
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-extensions":
                accepted = value.strip()
        assert accepted == (answer or ""), accepted
        extension: list[Any] = []
        if accepted:
            deflate = PerMessageDeflate()
            deflate.finalize(accepted)
            extension = [deflate]
        proto = FrameProtocol(client=True, extensions=extension)
        await stream.send_all(text(HELLO) + data + text(ping_json(SENTINEL_TS)))
        parts: list[bytes | str] = []
        while True:
            proto.receive_bytes(rest)
            for f in proto.received_frames():
                if f.opcode is Opcode.CLOSE:
                    out.close = f.payload[0]
                    return out
                if f.opcode is Opcode.PONG:
                    out.pongs.append(f.payload)
                elif f.opcode is Opcode.PING:
                    pass
                else:
                    parts.append(f.payload)
                    if f.message_finished:
                        raw = "".join(parts) if f.opcode is Opcode.TEXT else b"".join(parts)
                        parts = []
                        message = (
                            orjson.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)
                        )
                        if message.get("type") == "pong" and message.get("ts") == SENTINEL_TS:
                            return out
                        out.messages.append(message)
            rest = await stream.receive_some(65536)
            if not rest:
                return out


@pytest.fixture
async def conf_node(start_node: Callable[..., Any]) -> Node:
    node: Node = await start_node(
        limits={"rate": 100_000.0, "burst": 100_000, "max_frame_bytes": MAX},
        compression={"threshold": 64},
    )
    return node


def types(out: Outcome) -> list[str]:
    return [m["type"] for m in out.messages]


# 1 Framing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 128, 65535, 65536])
@pytest.mark.parametrize("chop", [0, 1, 997])
async def test_1_text_and_binary_payload_lengths(conf_node: Node, size: int, chop: int) -> None:
    """1.1 / 1.2: text and binary messages of every length class, whole or chopped into
    small writes (here: cut into one frame per ``chop`` bytes, a message still)."""
    for binary in (False, True):
        body = ping_msgpack(7, size) if binary else ping_json(7, size)
        if size == 0:
            body = b""
        opcode = 0x2 if binary else 0x1
        if chop and len(body) > chop:
            pieces = [body[i : i + chop] for i in range(0, len(body), chop)]
            data = b"".join(
                frame(opcode if k == 0 else 0x0, p, fin=k == len(pieces) - 1)
                for k, p in enumerate(pieces)
            )
        else:
            data = frame(opcode, body)
        with trio.fail_after(10):
            out = await run_case(conf_node, data)
        assert out.close is None
        if size == 0:
            assert types(out) == ["welcome", "error"]  # an empty message is no frame
            assert out.messages[1]["code"] == "bad_frame"
        else:
            assert types(out) == ["welcome", "pong"] and out.messages[1]["ts"] == 7


async def test_1_over_the_size_limit_closes_1009(conf_node: Node) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, text(ping_json(1, MAX + 1)))
    assert out.close == 1009 and types(out) == ["welcome"]


# 2 Pings and pongs -----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125)), b"\xff\xfe\x00"])
async def test_2_ping_is_answered_with_its_payload(conf_node: Node, payload: bytes) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, frame(0x9, payload))
    assert out.close is None and out.pongs == [payload]


async def test_2_many_pings_get_the_latest_answered(conf_node: Node) -> None:
    """2.10 / 2.11: ten pings in one write; RFC 6455 allows answering only the latest."""
    with trio.fail_after(5):
        out = await run_case(conf_node, b"".join(frame(0x9, b"%d" % k) for k in range(10)))
    assert out.close is None and out.pongs and out.pongs[-1] == b"9"


async def test_2_unsolicited_pongs_are_ignored(conf_node: Node) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, frame(0xA, b"unsolicited") + frame(0xA))
    assert out.close is None and types(out) == ["welcome"]


@pytest.mark.parametrize(
    "data",
    [frame(0x9, b"x" * 126), frame(0x9, b"x", fin=False), frame(0xA, b"x" * 126)],
    ids=["ping-126", "fragmented-ping", "pong-126"],
)
async def test_2_oversized_or_fragmented_control_closes_1002(conf_node: Node, data: bytes) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, text(ping_json(1)) + data)
    assert out.close == 1002 and types(out) == ["welcome", "pong"]


# 3 Reserved bits -------------------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("opcode", [0x1, 0x2, 0x9, 0x8])
async def test_3_reserved_bits_close_1002_after_earlier_answers(
    conf_node: Node, rsv: int, opcode: int
) -> None:
    payload = close_payload(1000) if opcode == 0x8 else ping_json(2)
    with trio.fail_after(5):
        out = await run_case(conf_node, text(ping_json(1)) + frame(opcode, payload, rsv=rsv))
    assert out.close == 1002
    assert types(out) == ["welcome", "pong"] and out.messages[1]["ts"] == 1


# 4 Opcodes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
async def test_4_reserved_opcodes_close_1002(conf_node: Node, opcode: int) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, text(ping_json(1)) + frame(opcode, b"x"))
    assert out.close == 1002 and types(out) == ["welcome", "pong"]


# 5 Fragmentation -------------------------------------------------------------------------------


@pytest.mark.parametrize("between", [b"", frame(0x9, b"p"), frame(0xA, b"q")])
@pytest.mark.parametrize("pieces", [2, 3, 17])
async def test_5_fragments_with_control_frames_between(
    conf_node: Node, between: bytes, pieces: int
) -> None:
    body = ping_json(5, 300)
    step = -(-len(body) // pieces)
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    data = b"".join(
        frame(0x1 if k == 0 else 0x0, c, fin=k == len(chunks) - 1) + between
        for k, c in enumerate(chunks)
    )
    with trio.fail_after(5):
        out = await run_case(conf_node, data)
    assert out.close is None and types(out) == ["welcome", "pong"]
    assert len(out.pongs) >= (1 if between.startswith(bytes((0x89,))) else 0)


@pytest.mark.parametrize(
    "data",
    [
        frame(0x0, b"x"),  # 5.9: continuation without a message
        frame(0x0, b"x", fin=False) + frame(0x0, b"y"),
        text(b'{"type":', fin=False) + text(b'"ping"}'),  # 5.18: a new message inside one
        text(b'{"type":', fin=False) + frame(0x9, b"p", fin=False),  # a fragmented ping
        text(b'{"type":', fin=False) + frame(0x2, b"x"),
    ],
)
async def test_5_broken_fragmentation_closes_1002(conf_node: Node, data: bytes) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, text(ping_json(1)) + data)
    assert out.close == 1002 and types(out) == ["welcome", "pong"]


# 6 UTF-8 ---------------------------------------------------------------------------------------

VALID_UTF8 = ["κόσμε", "\u0080", "\u07ff", "\u0800", "\uffff", "\U00010000", "\U0010ffff", "\ufffd"]
INVALID_UTF8 = [
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    b"\x80",  # a lone continuation byte
    b"\xc0\xaf",  # an overlong "/"
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xf5",
    b"\xfe",
    b"\xff",
    b"\xce",  # truncated
]


@pytest.mark.parametrize("value", VALID_UTF8)
@pytest.mark.parametrize("fragment", [0, 1])
async def test_6_valid_utf8_is_accepted(conf_node: Node, value: str, fragment: int) -> None:
    body = b'{"type":"ping","ts":6,"note":"' + value.encode() + b'"}'
    if fragment:  # cut in the middle of the value's code points
        cut = body.index(b'"note"') + 9
        data = text(body[:cut], fin=False) + frame(0x0, body[cut:])
    else:
        data = text(body)
    with trio.fail_after(5):
        out = await run_case(conf_node, data)
    assert out.close is None and types(out) == ["welcome", "pong"]


@pytest.mark.parametrize("value", INVALID_UTF8)
@pytest.mark.parametrize("fragment", [0, 1])
async def test_6_invalid_utf8_closes_1007(conf_node: Node, value: bytes, fragment: int) -> None:
    body = b'{"type":"ping","ts":6,"note":"' + value + b'"}'
    if fragment:
        data = text(body[:-3], fin=False) + frame(0x0, body[-3:])
    else:
        data = text(body)
    with trio.fail_after(5):
        out = await run_case(conf_node, text(ping_json(1)) + data)
    assert out.close == 1007 and types(out) == ["welcome", "pong"]


# 7 Closing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
)
async def test_7_valid_close_codes_are_echoed(conf_node: Node, code: int) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, frame(0x8, close_payload(code, b"bye")))
    assert out.close == code


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1012 + 4, 1100, 2000, 2999, 5000, 65535]
)
async def test_7_invalid_close_codes_close_1002(conf_node: Node, code: int) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, frame(0x8, close_payload(code)))
    assert out.close == 1002


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", 1005),  # 7.3.1: no code: answered without one (wsproto reports 1005)
        (b"\x03", 1002),  # 7.3.2: one byte
        (close_payload(1000, b"x" * 123), 1000),  # 7.3.5: the longest reason
        (close_payload(1000, b"\xff\xfe"), 1007),  # 7.5.1: a reason that is not UTF-8
    ],
)
async def test_7_close_payloads(conf_node: Node, payload: bytes, code: int) -> None:
    with trio.fail_after(5):
        out = await run_case(conf_node, frame(0x8, payload))
    assert out.close == code


async def test_7_nothing_after_the_close_is_handled(conf_node: Node) -> None:
    """7.1.2 - 7.1.6: frames after the client's close are not answered."""
    data = text(ping_json(1)) + frame(0x8, close_payload(1000)) + text(ping_json(2))
    data += frame(0x9, b"late")
    with trio.fail_after(5):
        out = await run_case(conf_node, data)
    assert out.close == 1000
    assert types(out) == ["welcome", "pong"] and out.pongs == []


# 9 Limits and throughput -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [4096, 16384, 65536])
@pytest.mark.parametrize("fragment", [0, 64, 4096])
async def test_9_large_messages_up_to_the_limit(conf_node: Node, size: int, fragment: int) -> None:
    body = ping_json(9, size)
    if fragment:
        pieces = [body[i : i + fragment] for i in range(0, len(body), fragment)]
        data = b"".join(
            frame(0x1 if k == 0 else 0x0, p, fin=k == len(pieces) - 1) for k, p in enumerate(pieces)
        )
    else:
        data = text(body)
    with trio.fail_after(10):
        out = await run_case(conf_node, data)
    assert out.close is None and types(out) == ["welcome", "pong"]


async def test_9_many_messages_in_one_write_are_answered_in_order(conf_node: Node) -> None:
    with trio.fail_after(10):
        out = await run_case(conf_node, b"".join(text(ping_json(k)) for k in range(1000)))
    assert out.close is None
    assert [m["ts"] for m in out.messages[1:]] == list(range(1000))


# 12 and 13 permessage-deflate ------------------------------------------------------------------

ACCEPT = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def deflated(data: bytes, bits: int = 15) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize("size", [16, 64, 256, 1024, 4096, 32768, 65536])
async def test_12_compressed_messages_of_every_size(conf_node: Node, size: int) -> None:
    """12.x: compressed client messages are inflated; the node's answers above its threshold
    come compressed, and decode."""
    data = b""
    for k in range(3):  # several, each compressed on its own
        data += text(deflated(ping_json(k, size)), rsv=4)
    data += text(ping_json(100, size))  # an uncompressed one in between is fine
    query_members = b'{"type":"event","id":1,"event":"users.online","data":{"pad":"%b"}}'
    data += text(deflated(query_members % (b"y" * max(0, size - 80))), rsv=4)
    with trio.fail_after(10):
        out = await run_case(conf_node, data, extensions="permessage-deflate", answer=ACCEPT)
    assert out.close is None
    assert types(out) == ["welcome", "pong", "pong", "pong", "pong", "ack"]
    assert [m["ts"] for m in out.messages[1:5]] == [0, 1, 2, 100]


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", ACCEPT),
        ("permessage-deflate; client_no_context_takeover", ACCEPT),
        ("permessage-deflate; server_no_context_takeover", ACCEPT),
        ("permessage-deflate; client_max_window_bits", ACCEPT),
        ("permessage-deflate; client_max_window_bits=9", ACCEPT),
        *(
            (
                f"permessage-deflate; server_max_window_bits={b}",
                f"{ACCEPT}; server_max_window_bits={b}",
            )
            for b in (9, 10, 12, 15)
        ),
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate", ACCEPT),
        ("permessage-deflate; unknown_param", None),
        ("x-webkit-deflate-frame, permessage-deflate", ACCEPT),
    ],
)
async def test_13_negotiated_parameters(conf_node: Node, offer: str, answer: str | None) -> None:
    """13.x: each offer gets the answer RFC 7692 allows; the node's compressed frames decode
    with the window it announced (wsproto's decoder uses exactly that window)."""
    big = b'{"type":"event","id":1,"event":"users.online","data":null,"pad":"%b"}' % (b"z" * 3000)
    with trio.fail_after(5):
        out = await run_case(conf_node, text(big), extensions=offer, answer=answer)
    assert out.close is None and types(out) == ["welcome", "ack"]


async def test_12_compressed_pushes_decode_after_many_messages(conf_node: Node) -> None:
    """Context takeover is off both ways: the hundredth compressed answer decodes alone."""
    joins = b"".join(
        text(
            deflated(
                b'{"type":"event","id":%d,"event":"room.join","data":{"room":"r%d"}}' % (k, k)
            ),
            rsv=4,
        )
        for k in range(100)
    )
    with trio.fail_after(10):
        out = await run_case(conf_node, joins, extensions="permessage-deflate", answer=ACCEPT)
    assert out.close is None and [m["id"] for m in out.messages[1:]] == list(range(100))

"""The server's WebSocket frame parser, checked against wsproto's client."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from roomd.ws._frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameParser,
    close_frame,
    control,
    frame,
)


def client() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])


def parse_all(parser: FrameParser, data: bytes, step: int = 7) -> list[tuple[int, object]]:
    """Feed ``data`` in chunks of ``step`` bytes; every item the parser yields."""
    out: list[tuple[int, object]] = []
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
        while (item := parser.next()) is not None:
            out.append(item)
    return out


messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(messages, st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=4))
def test_messages_from_wsproto_arrive_whole(
    items: list[str | bytes], step: int, fragments: int
) -> None:
    proto, data = client(), b""
    for item in items:
        n = max(1, len(item) // fragments)
        pieces = [item[i : i + n] for i in range(0, len(item), n)] or [item]
        for k, piece in enumerate(pieces):
            data += proto.send_data(piece, fin=k == len(pieces) - 1)
            if k == 0:
                data += proto.ping(b"between fragments")
    got = parse_all(FrameParser(10_000), data, step)
    data_items = [(op, p) for op, p in got if op in (OP_TEXT, OP_BINARY)]
    assert data_items == [(OP_TEXT if isinstance(i, str) else OP_BINARY, i) for i in items]
    assert sum(op == OP_PING for op, _ in got) == len(items)


def test_close_frames_and_codes() -> None:
    proto = client()
    assert parse_all(FrameParser(100), bytes(proto.close(4001, "bye"))) == [
        (OP_CLOSE, (4001, "bye"))
    ]
    assert parse_all(FrameParser(100), bytes(client().close())) == [(OP_CLOSE, (1005, ""))]


def masked(first: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client frame built by hand (to break the rules wsproto will not break)."""
    n = len(payload)
    head = (
        bytes((first, 0x80 | n)) if n < 126 else bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    )
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes((0x81, 0x03)) + b"abc", 1002),  # not masked
        (masked(0xC1, b"x"), 1002),  # RSV1 without an extension
        (masked(0x83, b"x"), 1002),  # unknown opcode
        (masked(0x80, b"x"), 1002),  # continuation without a message
        (masked(0x01, b"a") + masked(0x81, b"b"), 1002),  # new message inside a message
        (masked(0x09, b"x"), 1002),  # fragmented control frame
        (masked(0x89, b"x" * 126), 1002),  # control frame over 125 bytes
        (masked(0x81, b"\xff\xfe"), 1007),  # invalid UTF-8
        (masked(0x88, b"\x03"), 1002),  # one-byte close payload
        (masked(0x88, (1005).to_bytes(2, "big")), 1002),  # reserved close code
        (masked(0x88, (1000).to_bytes(2, "big") + b"\xff"), 1007),
        (masked(0x82, b"y" * 200), 1009),  # over the limit
        (masked(0x02, b"y" * 60) + masked(0x80, b"y" * 60), 1009),  # over it once joined
    ],
)
def test_protocol_violations(data: bytes, code: int) -> None:
    with pytest.raises(FrameError) as info:
        parse_all(FrameParser(100), data, step=1000)
    assert info.value.code == code


def test_size_is_refused_from_the_header() -> None:
    parser = FrameParser(1000)
    parser.feed(bytes((0x82, 0x80 | 127)) + (10**9).to_bytes(8, "big"))
    with pytest.raises(FrameError) as info:
        parser.next()
    assert info.value.code == 1009


def test_server_frames_parse_in_wsproto() -> None:
    proto = FrameProtocol(client=True, extensions=[])
    for payload in (b"", b"x" * 125, b"y" * 126, b"z" * 70_000):
        proto.receive_bytes(frame(payload, binary=True))
        (f,) = list(proto.received_frames())
        assert f.payload == payload
    proto.receive_bytes(control(0xA, b"p"))
    assert [f.payload for f in proto.received_frames()] == [b"p"]
    proto.receive_bytes(close_frame(4008, "slow consumer"))
    assert [f.payload for f in proto.received_frames()] == [(4008, "slow consumer")]
    assert close_frame(1000, "é" * 200)[1] <= 125

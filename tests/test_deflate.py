"""permessage-deflate, sans-I/O: negotiation, shared compressed frames, bounded inflation;
checked against wsproto's implementation of RFC 7692."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomd.ws import Deflater, FrameError, FrameParser, negotiate_deflate
from roomd.ws._deflate import compress, stored


@pytest.mark.parametrize(
    ("offer", "answer", "bits"),
    [
        (  # what browsers offer
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            15,
        ),
        (  # what wsproto offers
            "permessage-deflate; client_max_window_bits=15; server_max_window_bits=15",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=15",
            15,
        ),
        (
            "permessage-deflate; server_max_window_bits=10; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10",
            10,
        ),
        (  # zlib cannot make 8-bit windows: the first offer is declined, the second taken
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            15,
        ),
        ("permessage-deflate; mystery=1", None, 0),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None, 0),
        ("permessage-deflate; server_max_window_bits=16", None, 0),
        ("permessage-deflate; server_max_window_bits", None, 0),  # a value is required
        ("permessage-deflate; client_max_window_bits=x", None, 0),
        ("x-webkit-deflate-frame", None, 0),
        ("", None, 0),
    ],
)
def test_negotiation(offer: str, answer: str | None, bits: int) -> None:
    agreed = negotiate_deflate(offer, 15)
    if answer is None:
        assert agreed is None
    else:
        assert agreed == (answer, bits)


def test_the_node_window_caps_the_answer() -> None:
    assert negotiate_deflate("permessage-deflate", 12) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        12,
    )
    assert negotiate_deflate("permessage-deflate; server_max_window_bits=14", 12) is not None


def wsproto_client(answer: str) -> FrameProtocol:
    extension = PerMessageDeflate()
    extension.finalize(answer)
    return FrameProtocol(client=True, extensions=[extension])


def received(proto: FrameProtocol, data: bytes) -> list[tuple[Opcode, bytes | str]]:
    proto.receive_bytes(data)
    messages, parts = [], []
    for frame in proto.received_frames():
        parts.append(frame.payload)
        if frame.message_finished:
            payload = "".join(parts) if frame.opcode is Opcode.TEXT else b"".join(parts)
            messages.append((frame.opcode, payload))
            parts = []
    return messages


ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=3000),
    st.lists(st.binary(max_size=40), min_size=1, max_size=4),
    st.sampled_from([9, 12, 15]),
)
def test_a_shared_body_with_per_recipient_heads_decodes(
    body: bytes, heads: list[bytes], bits: int
) -> None:
    """One compressed body, many heads in front (stored blocks): every frame inflates to its
    head followed by the body, with wsproto's decoder."""
    shared = compress(body, bits, 6)
    client = wsproto_client(f"{ANSWER}; server_max_window_bits={bits}")
    data = b"".join(Deflater.frame(head, shared, binary=True) for head in heads)
    assert received(client, data) == [(Opcode.BINARY, head + body) for head in heads]


def test_threshold_and_no_gain_stay_plain() -> None:
    deflater = Deflater(15, 6, threshold=100)
    small = b'{"type":"pong"}'
    assert deflater.message(small, False)[0] == 0x81  # FIN, text, no RSV1
    big = b'{"data":"' + b"ab" * 500 + b'"}'
    frame = deflater.message(big, False)
    assert frame[0] == 0xC1 and len(frame) < len(big)  # FIN, RSV1, text
    assert received(wsproto_client(ANSWER), frame) == [(Opcode.TEXT, big.decode())]
    noise = random.Random(7).randbytes(1024)
    assert deflater.shared(noise) is None  # incompressible: plain for everyone
    assert deflater.shared(b"x" * 99) is None  # under the threshold
    assert deflater.shared(b"x" * 100) is not None


def client_frames(*messages: str | bytes, fragment: int = 0) -> bytes:
    proto = wsproto_client(ANSWER)
    data = b""
    for message in messages:
        if fragment:
            pieces = [message[i : i + fragment] for i in range(0, len(message), fragment)]
            for k, piece in enumerate(pieces):
                data += proto.send_data(piece, fin=k == len(pieces) - 1)
        else:
            data += proto.send_data(message)
    return data


def parse(parser: FrameParser, data: bytes) -> list[tuple[int, object]]:
    parser.feed(data)
    out = []
    while (item := parser.next()) is not None:
        out.append(item)
    return out


def test_the_parser_inflates_client_messages() -> None:
    text = '{"type":"event","event":"x","data":"' + "hello " * 300 + '"}'
    data = client_frames(text, b"\x00\x01" * 400, text, fragment=0)
    data += client_frames(text, fragment=100)  # fragmented: RSV1 on the first frame only
    parsed = parse(FrameParser(10_000, deflate=True), data)
    assert parsed == [(1, text), (2, b"\x00\x01" * 400), (1, text), (1, text)]


def masked(first: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    return (
        bytes((first, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


@pytest.mark.parametrize(
    ("data", "deflate", "code"),
    [
        (masked(0xC1, compress(b"x", 15, 6)), False, 1002),  # RSV1 not negotiated
        (masked(0xA1, b"x"), True, 1002),  # RSV2
        (
            masked(0x41, compress(b"ab", 15, 6)) + masked(0xC0, b"x"),
            True,
            1002,
        ),  # on a continuation
        (masked(0xC9, b""), True, 1002),  # on a ping
        (masked(0xC1, b"\xff\xff\xff"), True, 1007),  # not DEFLATE
        (masked(0xC1, compress(b"\xff\xfe", 15, 6)), True, 1007),  # inflates to bad UTF-8
        (masked(0xC2, compress(b"z" * 100_000, 15, 9)), True, 1009),  # a bomb: 100 kB from 100 B
    ],
)
def test_parser_violations(data: bytes, deflate: bool, code: int) -> None:
    with pytest.raises(FrameError) as info:
        parse(FrameParser(10_000, deflate=deflate), data)
    assert info.value.code == code


def test_a_bomb_is_refused_without_inflating_it_all() -> None:
    bomb = compress(b"\x00" * 50_000_000, 15, 9)  # 49 kB inflating to 50 MB
    assert len(bomb) < 60_000
    parser = FrameParser(65536, deflate=True)
    head = bytes((0xC2, 0x80 | 127)) + len(bomb).to_bytes(8, "big") + b"\x00" * 4
    with pytest.raises(FrameError) as info:
        parse(parser, head + bomb)  # the mask is zero: the payload is as it is
    assert info.value.code == 1009


def test_stored_block_is_valid_deflate() -> None:
    inflater = zlib.decompressobj(-15)
    assert (
        inflater.decompress(stored(b"abc") + compress(b"def", 15, 6) + b"\x00\x00\xff\xff")
        == b"abcdef"
    )


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("seq", [None, 1, 127, 128, 70_000, 2**40])
def test_a_push_is_its_head_and_its_shared_tail(binary: bool, seq: int | None) -> None:
    from roomd.protocol import Push, PushTemplate, RoomRef

    template = PushTemplate.of(Push("e", {"k": [1, "x"]}, room=RoomRef("/", "r"), sender="u"))
    assert template.head(seq, binary) + template.tail(binary) == template.render(seq, binary)
    deflater = Deflater(15, 6, threshold=0)
    shared = template.shared(binary, deflater, lambda tail: compress(tail, 15, 6))
    assert template.shared(binary, deflater, lambda tail: b"never called") is shared
    frame = Deflater.frame(template.head(seq, binary), shared or b"", binary)
    expected = template.render(seq, binary)
    assert received(wsproto_client(ANSWER), frame) == [
        (Opcode.BINARY, expected) if binary else (Opcode.TEXT, expected.decode())
    ]

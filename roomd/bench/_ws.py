"""A minimal client side of RFC 6455 for the load generator: sans-I/O and cheap per frame.

The upgrade request, the check of the ``101`` answer, masked client frames, and a parser for
what a server sends (frames that are never masked). It covers what a roomd node sends: text,
binary, ping and close frames, and continuation frames for completeness, and compressed
messages when it offered permessage-deflate (each is inflated on its own: a roomd node never
takes its compression context over from one message to the next). It is no general WebSocket
client (no subprotocol negotiation, no other extension).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zlib
from typing import Final

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_RSV1: Final = 0x40
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"
DEFLATE_OFFER: Final = "permessage-deflate; client_max_window_bits"  # what browsers offer
_FIN: Final = 0x80
_MASK_BIT: Final = 0x80
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class HandshakeFailed(Exception):
    """The server did not switch protocols (the message carries its status line)."""


class ServerProtocolError(Exception):
    """The server sent something RFC 6455 forbids (a masked frame, a bad length)."""


def new_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key``."""
    return base64.b64encode(os.urandom(16))


def accept_for(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def upgrade_request(
    host: str, port: int, target: str, key: bytes, *, deflate: bool = False
) -> bytes:
    """The HTTP/1.1 upgrade request for path-and-query ``target``."""
    offer = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n{offer}\r\n"
    ).encode()


def check_upgrade_response(head: bytes, key: bytes) -> None:
    """Check the response head (up to the blank line) to an upgrade request with ``key``.

    Error handling: :class:`HandshakeFailed` if it is not a ``101`` with the right accept key.
    """
    lines = head.split(b"\r\n")
    status = lines[0].decode(errors="replace")
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeFailed(status)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != accept_for(key):
        raise HandshakeFailed("bad Sec-WebSocket-Accept")


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key`` (one big-integer XOR, not a byte loop)."""
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One complete, masked client frame (every client frame must be masked)."""
    key = os.urandom(4)
    n = len(payload)
    first = _FIN | opcode
    if n < 126:
        head = bytes((first, _MASK_BIT | n))
    elif n < 65536:
        head = bytes((first, _MASK_BIT | 126)) + _U16.pack(n)
    else:
        head = bytes((first, _MASK_BIT | 127)) + _U64.pack(n)
    return head + key + mask(payload, key)


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    """A masked close frame with ``code`` and ``reason``."""
    return client_frame(_U16.pack(code) + reason.encode(), OP_CLOSE)


def close_code(payload: bytes) -> int:
    """The status code of a close frame's payload (1005 when it has none)."""
    return int(_U16.unpack_from(payload)[0]) if len(payload) >= 2 else 1005


class FrameReader:
    """Splits the byte stream from a server into complete messages.

    :meth:`feed` returns ``(opcode, payload)`` for every message completed by the new bytes; a
    fragmented message comes out once, whole, with the opcode of its first frame. Control frames
    (ping, pong, close) come out as they arrive, even between the fragments of a message.

    Error handling: :class:`ServerProtocolError` for a masked frame or an unknown opcode.
    """

    __slots__ = ("_buf", "_parts", "_parts_op")

    def __init__(self) -> None:
        self._buf = b""
        self._parts: list[bytes] = []
        self._parts_op = OP_CONT

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & _MASK_BIT:
                raise ServerProtocolError("a server frame must not be masked")
            length = b1
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = _U16.unpack_from(buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = _U64.unpack_from(buf, pos + 2)[0]
                head = 10
            stop = pos + head + length
            if stop > end:
                break
            payload = buf[pos + head : stop]
            pos = stop
            opcode = b0 & 0x0F
            if b0 & _RSV1:  # permessage-deflate (a roomd node never fragments its frames)
                payload = zlib.decompressobj(-15).decompress(payload + _DEFLATE_TAIL)
            if b0 & _FIN and opcode != OP_CONT:
                out.append((opcode, payload))
            else:
                self._fragment(opcode, payload, bool(b0 & _FIN), out)
        self._buf = buf[pos:] if pos < end else b""
        return out

    def _fragment(
        self, opcode: int, payload: bytes, fin: bool, out: list[tuple[int, bytes]]
    ) -> None:
        if opcode not in (OP_CONT, OP_TEXT, OP_BINARY):
            raise ServerProtocolError(f"opcode {opcode:#x} cannot be fragmented")
        if opcode != OP_CONT:
            self._parts_op = opcode
        self._parts.append(payload)
        if fin:
            out.append((self._parts_op, b"".join(self._parts)))
            self._parts = []

"""The server's side of WebSocket framing (RFC 6455, section 5), sans-I/O.

Frames a server sends are never masked, so the bytes of a frame depend only on its payload: a push
rendered once can be written to any number of connections (:func:`frame`). What clients send is
parsed by :class:`FrameParser`: masked frames, fragmented messages, control frames between the
fragments, UTF-8 checks, the close payload, and the message size limit checked from each frame's
header, before its payload is buffered. The one extension is permessage-deflate
(:mod:`._deflate`): a parser created with ``deflate=True`` accepts RSV1 on a message's first
frame and inflates the message once it is whole.

A hand-written parser rather than wsproto's: per message it does a fraction of the work (no event
objects, no incremental UTF-8 decoder), and per connection it holds a bytearray and four fields
instead of a decoder, a generator and their buffers (a few hundred bytes, which count when a node
holds thousands of idle connections). The test suite checks it against wsproto's client.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_PING: Final = 0x9

_FIN: Final = 0x80
_RSV1: Final = 0x40  # permessage-deflate: the message is compressed
_SHORT: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


def frame(payload: bytes, binary: bool) -> bytes:
    """One complete, unfragmented data frame carrying ``payload``."""
    first = _FIN | (OP_BINARY if binary else OP_TEXT)
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _SHORT.pack(first, 126, n) + payload
    return _LONG.pack(first, 127, n) + payload


def frame_header(length: int, binary: bool, *, compressed: bool = False) -> bytes:
    """The header of a complete, unfragmented data frame of ``length`` payload bytes."""
    first = _FIN | (OP_BINARY if binary else OP_TEXT) | (_RSV1 if compressed else 0)
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _SHORT.pack(first, 126, length)
    return _LONG.pack(first, 127, length)


PING: Final = bytes((_FIN | OP_PING, 0))  # an empty ping, the same for every connection
OP_CONTINUATION: Final = 0x0
OP_CLOSE: Final = 0x8
OP_PONG: Final = 0xA

NO_STATUS: Final = 1005  # a close frame without a code (never sent)


def control(opcode: int, payload: bytes = b"") -> bytes:
    """A control frame (ping, pong, close); ``payload`` is at most 125 bytes."""
    return bytes((_FIN | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125-byte limit of control frames."""
    if code == NO_STATUS:
        return control(OP_CLOSE)
    encoded = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return control(OP_CLOSE, code.to_bytes(2, "big") + encoded)


class FrameError(Exception):
    """The peer broke RFC 6455: the connection must be closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_VALID_CLOSE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def _unmask(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = int.from_bytes((bytes(mask) * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


class FrameParser:
    """Parses what a client sends (sans-I/O): masked frames in, complete messages out.

    :meth:`feed` takes bytes as they arrive; :meth:`next` returns ``(opcode, payload)`` for the
    next complete data message (``OP_TEXT`` with ``str``, ``OP_BINARY`` with ``bytes``: fragments
    already joined) or control frame (``OP_PING``, ``OP_PONG``, ``OP_CLOSE`` with
    ``(code, reason)``), or ``None`` when more bytes are needed. A message larger than
    ``max_message`` is refused from its header on, before its payload is buffered.

    Error handling: :meth:`next` raises :class:`FrameError` (1002 protocol error, 1007 invalid
    UTF-8, 1009 too big); the connection cannot go on after it.
    """

    __slots__ = ("_buf", "_compressed", "_deflate", "_max", "_opcode", "_parts", "_size")

    def __init__(self, max_message: int, *, deflate: bool = False) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._deflate = deflate  # permessage-deflate was negotiated
        self._compressed = False  # the message being reassembled is compressed
        self._opcode = -1  # the opcode of the data message being reassembled, if any
        self._parts: list[bytes] | None = None
        self._size = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes fed and not parsed yet."""
        return len(self._buf)

    def next(self) -> tuple[int, object] | None:
        while True:
            frame = self._frame()
            if frame is None:
                return None
            fin, rsv1, opcode, payload = frame
            if opcode >= 0x8:
                if rsv1:
                    raise FrameError(1002, "RSV1 set on a control frame")
                return opcode, self._control(opcode, payload)
            if opcode == OP_CONTINUATION:
                if self._parts is None:
                    raise FrameError(1002, "continuation frame without a message")
                if rsv1:
                    raise FrameError(1002, "RSV1 set on a continuation frame")
            else:
                if self._parts is not None:
                    raise FrameError(1002, "new message before the last one ended")
                self._opcode, self._parts, self._compressed = opcode, [], rsv1
            assert self._parts is not None
            self._parts.append(payload)
            if fin:
                parts, self._parts = self._parts, None
                message = parts[0] if len(parts) == 1 else b"".join(parts)
                if self._compressed:
                    message = inflate(message, self._max)
                if self._opcode == OP_TEXT:
                    try:
                        return OP_TEXT, message.decode("utf-8")
                    except UnicodeDecodeError:
                        raise FrameError(1007, "invalid UTF-8 in a text message") from None
                return OP_BINARY, message

    def _frame(self) -> tuple[bool, bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & (0x30 if self._deflate else 0x70):
            raise FrameError(1002, "reserved bits set (no extension defines them)")
        opcode = b0 & 0x0F
        if opcode not in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA):
            raise FrameError(1002, f"unknown opcode {opcode}")
        if not b1 & 0x80:
            raise FrameError(1002, "client frames must be masked")
        length = b1 & 0x7F
        start = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, start = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, start = int.from_bytes(buf[2:10], "big"), 10
            if length >> 63:
                raise FrameError(1002, "frame length out of range")
        fin = bool(b0 & 0x80)
        if opcode >= 0x8:
            if not fin or length > 125:
                raise FrameError(1002, "control frames must be whole and at most 125 bytes")
        elif (self._size if opcode == OP_CONTINUATION else 0) + length > self._max:
            raise FrameError(1009, f"message larger than {self._max} bytes")
        end = start + 4 + length
        if len(buf) < end:
            return None
        payload = _unmask(buf[start + 4 : end], buf[start : start + 4])
        del buf[:end]
        if opcode < 0x8:
            self._size = (self._size if opcode == OP_CONTINUATION else 0) + length
        return fin, bool(b0 & _RSV1), opcode, payload

    @staticmethod
    def _control(opcode: int, payload: bytes) -> object:
        if opcode != OP_CLOSE:
            return payload
        if not payload:
            return (NO_STATUS, "")
        if len(payload) == 1:
            raise FrameError(1002, "close frame with a one-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
            raise FrameError(1002, f"invalid close code {code}")
        try:
            return (code, payload[2:].decode("utf-8"))
        except UnicodeDecodeError:
            raise FrameError(1007, "invalid UTF-8 in a close reason") from None


def inflate(payload: bytes, max_size: int) -> bytes:
    """A client's compressed message, inflated on its own (no context is kept).

    Error handling: :class:`FrameError` 1009 if it inflates to more than ``max_size`` bytes
    (checked while inflating: a small message cannot make the node allocate more), 1007 if it
    is not valid DEFLATE data.
    """
    inflater = zlib.decompressobj(-15)
    try:
        data = inflater.decompress(payload + b"\x00\x00\xff\xff", max_size + 1)
    except zlib.error:
        raise FrameError(1007, "invalid compressed data") from None
    if len(data) > max_size or inflater.unconsumed_tail:
        raise FrameError(1009, f"message larger than {max_size} bytes")
    return data

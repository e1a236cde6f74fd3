"""permessage-deflate (RFC 7692) on the server's side, sans-I/O: negotiation, compressed frames
that many recipients can share, and bounded inflation of what clients send.

The node negotiates ``server_no_context_takeover`` and ``client_no_context_takeover`` always:

* every message the node sends is compressed on its own, so the compressed body of a push is the
  same bytes for every recipient and is computed once per message (:meth:`Deflater.shared`),
  like the push's JSON; what differs per recipient (the push's ``seq``) is put in front of it as
  a *stored* (uncompressed) DEFLATE block, which needs no compressor: :meth:`Deflater.frame`;
* every message a client sends is inflated on its own (:func:`._frames.inflate`), so a
  connection holds no zlib state between messages: compression costs a connection no memory
  while it is idle, and inflating one message takes a transient window of at most 32 KiB.

Messages shorter than ``threshold`` bytes stay plain (RSV1 clear), which RFC 7692 allows: small
messages gain little and would cost a compressor each.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from ._frames import frame_header

EXTENSION: Final = "permessage-deflate"
_STORED: Final = struct.Struct("<BHH")  # BFINAL=0, BTYPE=00; LEN, NLEN
_MIN_BITS: Final = 9  # zlib's smallest raw window (it cannot honour 8)
_MAX_BITS: Final = 15  # (a client's messages are inflated with this window: _frames.inflate)


def _offers(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The extension offers of a ``Sec-WebSocket-Extensions`` field: names and parameters."""
    offers = []
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        parsed: list[tuple[str, str | None]] = []
        for param in params:
            key, eq, value = param.partition("=")
            parsed.append((key.strip().lower(), value.strip().strip('"') if eq else None))
        if name:
            offers.append((name.lower(), parsed))
    return offers


def negotiate_deflate(header: str, max_window_bits: int) -> tuple[str, int] | None:
    """Accept the first acceptable permessage-deflate offer of ``header``: the response's
    extension field and the window the node compresses with; ``None`` to decline them all.

    An offer with an unknown or repeated parameter, or a value out of range, is declined
    (RFC 7692, section 5); so is one that asks for a server window below 512 bytes, which zlib
    cannot produce.
    """
    for name, params in _offers(header):
        if name != EXTENSION:
            continue
        keys = [key for key, _ in params]
        if len(set(keys)) != len(keys):
            continue
        bits = max_window_bits
        answer = [EXTENSION, "server_no_context_takeover", "client_no_context_takeover"]
        acceptable = True
        for key, value in params:
            if key in ("server_no_context_takeover", "client_no_context_takeover"):
                acceptable = value is None
            elif key == "client_max_window_bits":
                acceptable = value is None or _window(value) is not None
            elif key == "server_max_window_bits":
                asked = _window(value) if value is not None else None
                acceptable = asked is not None and asked >= _MIN_BITS
                if asked is not None:
                    bits = min(bits, asked)
                    answer.append(f"server_max_window_bits={bits}")
            else:
                acceptable = False
            if not acceptable:
                break
        if acceptable:
            return "; ".join(answer), bits
    return None


def _window(value: str) -> int | None:
    if not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= _MAX_BITS else None


def compress(data: bytes, bits: int, level: int) -> bytes:
    """``data`` as one message's DEFLATE payload (a sync flush, its empty tail removed)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -bits, 8)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def stored(data: bytes) -> bytes:
    """``data`` as a stored DEFLATE block that is not the last one (at most 65,535 bytes)."""
    n = len(data)
    return _STORED.pack(0, n, n ^ 0xFFFF) + data


class Deflater:
    """The compression the node applies to the connections that negotiated one window size.

    Shared by those connections (it holds settings, never a connection's state).
    """

    __slots__ = ("bits", "level", "threshold")

    def __init__(self, bits: int, level: int, threshold: int) -> None:
        if not _MIN_BITS <= bits <= _MAX_BITS:
            raise ValueError(f"compression window bits must be within {_MIN_BITS}..{_MAX_BITS}")
        if not 1 <= level <= 9:
            raise ValueError("compression level must be within 1..9")
        self.bits = bits
        self.level = level
        self.threshold = threshold

    def message(self, payload: bytes, binary: bool) -> bytes:
        """A complete frame carrying ``payload``: compressed when that is worth it."""
        if len(payload) >= self.threshold:
            body = compress(payload, self.bits, self.level)
            if len(body) < len(payload):
                return frame_header(len(body), binary, compressed=True) + body
        return frame_header(len(payload), binary) + payload

    def shared(self, body: bytes) -> bytes | None:
        """The compressed form of a body many frames share, or ``None`` if it should stay
        plain (below the threshold, or not smaller compressed)."""
        if len(body) < self.threshold:
            return None
        compressed = compress(body, self.bits, self.level)
        return compressed if len(compressed) + 5 < len(body) else None

    @staticmethod
    def frame(prefix: bytes, shared: bytes, binary: bool) -> bytes:
        """A compressed frame whose message is ``prefix`` followed by the body that ``shared``
        is the :meth:`shared` form of: the prefix travels as a stored block in front."""
        n = len(prefix)
        header = frame_header(n + 5 + len(shared), binary, compressed=True)
        return b"".join((header, _STORED.pack(0, n, n ^ 0xFFFF), prefix, shared))

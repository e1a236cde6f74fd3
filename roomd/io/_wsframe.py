"""Server-side WebSocket frame encoding (RFC 6455, section 5.2).

Frames a server sends are never masked, so the bytes of a frame depend only on its payload: a push
rendered once can be written to any number of connections. wsproto handles everything else
(parsing client frames, close and ping replies).
"""

from __future__ import annotations

import struct
from typing import Final

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_PING: Final = 0x9

_FIN: Final = 0x80
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


PING: Final = bytes((_FIN | OP_PING, 0))  # an empty ping, the same for every connection

"""Reading an HTTP request head from a socket and writing bytes to it, under Trio."""

from __future__ import annotations

import socket
from typing import Final

import trio

from ..ws import MAX_HEAD_BYTES, BadRequest, HttpRequest, parse_head

_RECEIVE_SIZE: Final = 16 * 1024


async def read_request(sock: socket.socket) -> HttpRequest:
    """Read one request head from a non-blocking socket (the caller bounds the time).

    Error handling: raises :class:`BadRequest` for malformed or oversized heads, and on EOF.
    """
    buf = b""
    end = -1
    while end < 0:
        try:
            data = sock.recv(_RECEIVE_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as exc:
            raise BadRequest(f"connection failed: {exc}") from None
        if not data:
            raise BadRequest("connection closed before the request head")
        start = max(0, len(buf) - 3)
        buf += data
        end = buf.find(b"\r\n\r\n", start)
        if end < 0 and len(buf) > MAX_HEAD_BYTES:
            raise BadRequest("request head too large")
    if end > MAX_HEAD_BYTES:
        raise BadRequest("request head too large")
    return parse_head(buf[:end], buf[end + 4 :])


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking socket. Raises ``OSError`` if it fails."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)

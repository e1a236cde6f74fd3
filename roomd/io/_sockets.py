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


LINGER: Final = 1.0  # seconds a refused connection is read (and discarded) after the answer


async def refuse(sock: socket.socket, reply: bytes) -> None:
    """Answer a connection at once, without reading its request, and close it.

    A lingering close: after the answer the writing side is shut and what the client still
    sends is read and discarded for at most :data:`LINGER` seconds, so that its request
    arriving late does not make the kernel reset the connection before the client has read the
    answer. Resource handling: the socket is closed when this returns.
    """
    try:
        with trio.move_on_after(LINGER):
            await send_all(sock, reply)
            sock.shutdown(socket.SHUT_WR)
            while True:
                try:
                    if not sock.recv(_RECEIVE_SIZE):
                        break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
    except OSError:
        pass
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()

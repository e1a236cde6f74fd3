"""Reading an HTTP request head from a socket and writing bytes to it, under Trio; the TLS
handshake of a connection the node serves over TLS (:class:`~roomd.ws.TlsSession`)."""

from __future__ import annotations

import socket
from typing import Final

import trio

from ..ws import MAX_HEAD_BYTES, BadRequest, HttpRequest, TlsError, TlsSession, parse_head

_RECEIVE_SIZE: Final = 16 * 1024


async def tls_handshake(sock: socket.socket, tls: TlsSession) -> None:
    """Complete the server's TLS handshake on a non-blocking socket (the caller bounds the
    time). Error handling: raises :class:`BadRequest` if the peer fails it or goes away."""
    data = b""
    while True:
        try:
            done = tls.handshake(data)
        except TlsError as exc:
            raise BadRequest(f"TLS handshake failed: {exc}") from None
        try:
            await send_all(sock, tls.outgoing())
        except OSError as exc:
            raise BadRequest(f"connection failed: {exc}") from None
        if done:
            return
        data = await _receive_raw(sock)
        if not data:
            raise BadRequest("connection closed during the TLS handshake")


async def _receive_raw(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(_RECEIVE_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
        except OSError as exc:
            raise BadRequest(f"connection failed: {exc}") from None


async def _receive(sock: socket.socket, tls: TlsSession | None) -> bytes:
    """The next bytes of the request (decrypted over TLS); ``b""`` at the end."""
    while True:
        data = await _receive_raw(sock)
        if tls is None or not data:
            return data
        try:
            plain = tls.receive(data)
        except TlsError as exc:
            raise BadRequest(f"TLS: {exc}") from None
        if plain or tls.closed:
            return plain


def receive_now(sock: socket.socket) -> bytes:
    """What a non-blocking socket holds now (one ``recv``): ``b""`` if nothing, at its end or
    if it failed (a later read tells which)."""
    try:
        return sock.recv(_RECEIVE_SIZE)
    except OSError:  # (BlockingIOError too)
        return b""


def send_now(sock: socket.socket, data: bytes) -> int:
    """How much of ``data`` a non-blocking socket takes now (one ``send``); 0 if it failed."""
    try:
        return sock.send(data)
    except OSError:  # (BlockingIOError too: a later write tells which)
        return 0


async def read_request(
    sock: socket.socket, tls: TlsSession | None = None, received: bytes = b""
) -> HttpRequest:
    """Read one request head from a non-blocking socket (the caller bounds the time), through
    ``tls`` if given, after the bytes ``received`` already (without TLS).

    Error handling: raises :class:`BadRequest` for malformed or oversized heads, and on EOF.
    """
    buf = tls.receive(b"") if tls is not None else received  # (TLS: what came with its handshake)
    end = buf.find(b"\r\n\r\n")
    while end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise BadRequest("request head too large")
        data = await _receive(sock, tls)
        if not data:
            raise BadRequest("connection closed before the request head")
        start = max(0, len(buf) - 3)
        buf += data
        end = buf.find(b"\r\n\r\n", start)
    if end > MAX_HEAD_BYTES:
        raise BadRequest("request head too large")
    return parse_head(buf[:end], buf[end + 4 :])


async def send_all(sock: socket.socket, data: bytes, tls: TlsSession | None = None) -> None:
    """Write all of ``data`` to a non-blocking socket (encrypted by ``tls`` if given).
    Raises ``OSError`` if it fails."""
    if tls is not None:
        tls.send(data)
        data = tls.outgoing()
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

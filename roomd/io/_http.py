"""Plain HTTP on the WebSocket port: read a request head, answer small responses.

h11 parses the request head. A WebSocket upgrade is recognised by h11 as a protocol switch
proposal: the connection pauses and the bytes after the head are kept for the WebSocket layer.
"""

from __future__ import annotations

import urllib.parse
from typing import Final

import attrs
import h11
import trio

MAX_HEAD_BYTES: Final = 16 * 1024
_RECEIVE_SIZE: Final = 16 * 1024


class BadRequest(Exception):
    """The peer sent something that is not an acceptable HTTP request head."""


@attrs.frozen
class HttpRequest:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    upgrade: bool  # h11 saw a protocol switch proposal (Upgrade header)
    trailing: bytes  # bytes received after the head (already the upgraded protocol)

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


async def read_request(stream: trio.abc.ReceiveStream) -> HttpRequest:
    """Read one request head from ``stream``.

    Error handling: raises :class:`BadRequest` for malformed or oversized heads, and on EOF.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(str(exc)) from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise BadRequest("connection closed before the request head")
            conn.receive_data(bytes(data))
            continue
        if not isinstance(event, h11.Request):
            raise BadRequest(f"unexpected {type(event).__name__}")
        return _to_request(conn, event, _switching(conn))


def _switching(conn: h11.Connection) -> bool:
    """Whether the peer proposed a protocol switch (after a bodiless request head)."""
    try:
        event = conn.next_event()
        if isinstance(event, h11.EndOfMessage):
            event = conn.next_event()
    except h11.RemoteProtocolError:
        return False
    return event is h11.PAUSED


def _to_request(conn: h11.Connection, event: h11.Request, upgrade: bool) -> HttpRequest:
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = event.target.decode("latin-1")
    parts = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(parts.query))
    trailing = conn.trailing_data[0] if upgrade else b""
    return HttpRequest(
        method=event.method.decode("latin-1"),
        target=target,
        path=parts.path or "/",
        query=query,
        headers=headers,
        upgrade=upgrade,
        trailing=bytes(trailing),
    )


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    503: "Service Unavailable",
}


def response(
    status: int,
    body: bytes,
    content_type: str,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in extra_headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

"""Plain HTTP on the WebSocket port, sans-I/O: parse a request head, build small responses.

The node needs little of HTTP/1.1: one request head per connection (a WebSocket upgrade, or a
``GET`` it answers and then closes the connection), no bodies, no keep-alive. :func:`parse_head`
reads exactly that, strictly (RFC 9112 request line and header fields; anything else is a 400),
in a few microseconds instead of a general-purpose parser's tens. Reading the head from a socket
is :func:`roomd.io.read_request`.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

import attrs
import orjson

MAX_HEAD_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 100
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls, but tab
# A field line: its name (a token), and its value without the spaces and tabs before it
# (RFC 9112, section 5; those after it are stripped apart: a pattern that stripped them would
# backtrack, quadratic in a run of spaces); a value holds no control character but tab.
_FIELD: Final = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)")


class BadRequest(Exception):
    """The peer sent something that is not an acceptable HTTP request head."""


@attrs.frozen
class HttpRequest:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    upgrade: bool  # the client asks to switch protocols (Connection: upgrade + Upgrade)
    trailing: bytes  # bytes received after the head (already the upgraded protocol)
    version: str = "HTTP/1.1"

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


def parse_head(head: bytes, trailing: bytes = b"") -> HttpRequest:
    """Parse a request head (without its final blank line). Raises :class:`BadRequest`.

    An HTTP/1.1 request must carry exactly one ``Host`` field (RFC 9112, section 3.2).
    Each field line is one match of :data:`_FIELD`, on the head decoded once (Latin-1: every
    byte is one character, and a token is ASCII); only a line that does not match is looked at
    again, to say what is wrong with it.
    """
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise BadRequest("malformed request line")
    method, target, version = parts
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        raise BadRequest("HTTP/1.1 expected")
    if target[:1] != "/" or _FORBIDDEN.search(target):
        raise BadRequest("malformed request target")
    if not target.isascii():  # (not a URI: what is not ASCII is replaced)
        target = target.encode("latin-1").decode("ascii", "replace")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest("too many header fields")
    headers: dict[str, str] = {}
    field = _FIELD.fullmatch
    for line in lines[1:]:
        match = field(line)
        if match is None:
            raise BadRequest(_what_is_wrong(line))
        name, value = match.groups()
        value = value.rstrip(" \t")
        key = name.lower()
        if key in headers:
            if key == "host":
                raise BadRequest("more than one Host header field")
            value = f"{headers[key]}, {value}"
        headers[key] = value
    if version == "HTTP/1.1" and not headers.get("host"):
        raise BadRequest("no Host header field")
    path, _, query = target.partition("#")[0].partition("?")
    connection = headers.get("connection", "")
    upgrade = "upgrade" in headers and "upgrade" in {
        t.strip() for t in connection.lower().split(",")
    }
    return HttpRequest(
        method=method,
        target=target,
        path=path or "/",
        query=dict(urllib.parse.parse_qsl(query)) if query else {},
        headers=headers,
        upgrade=upgrade,
        trailing=trailing if upgrade else b"",
        version=version,
    )


def _what_is_wrong(line: str) -> str:
    """Why a field line does not match :data:`_FIELD`."""
    name, colon, _ = line.partition(":")
    if not colon or not _TOKEN.fullmatch(name):
        return "malformed header field"  # also obs-fold (leading space)
    return "control characters in a header field"


_REASONS: Final = {
    200: "OK",
    202: "Accepted",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def response(
    status: int,
    body: bytes,
    content_type: str,
    extra_headers: tuple[tuple[str, str], ...] = (),
    *,
    cache_control: str = "no-store",
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection.

    Every answer says ``nosniff``: a browser must not read a body as anything but its
    ``Content-Type``.
    """
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"Cache-Control: {cache_control}",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in extra_headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: int, body: object, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A response whose body is ``body`` as JSON."""
    return response(status, orjson.dumps(body), "application/json", headers)

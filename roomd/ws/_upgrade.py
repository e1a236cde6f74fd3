"""The server side of the WebSocket opening handshake (RFC 6455, section 4.2)."""

from __future__ import annotations

import base64
import binascii
from typing import Final

from wsproto.utilities import generate_accept_token

from ._http import HttpRequest, json_response

SUBPROTOCOL: Final = "roomd.v1"


class HandshakeError(Exception):
    """The request is not an acceptable WebSocket upgrade; ``reply`` is the HTTP answer."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.reply = json_response(status, {"error": message}, headers)


def tokens(value: str) -> set[str]:
    """The elements of a comma-separated header field, lower-cased (RFC 9110, section 5.6.1)."""
    return {item.strip().lower() for item in value.split(",")} - {""}


def check_upgrade(request: HttpRequest) -> None:
    """Raise :class:`HandshakeError` unless ``request`` is a valid WebSocket upgrade
    (RFC 6455, section 4.2.1: an HTTP/1.1 ``GET`` whose ``Upgrade`` lists ``websocket``)."""
    if request.method != "GET":
        raise HandshakeError(405, "WebSocket upgrades must use GET", (("Allow", "GET"),))
    if request.version != "HTTP/1.1":
        raise HandshakeError(400, "WebSocket upgrades need HTTP/1.1")
    if "websocket" not in tokens(request.header("upgrade")):
        raise HandshakeError(400, "Upgrade: websocket expected")
    if request.header("sec-websocket-version") != "13":
        raise HandshakeError(
            426, "WebSocket version 13 required", (("Sec-WebSocket-Version", "13"),)
        )
    key = request.header("sec-websocket-key")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid = False
    if not valid:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")


def accept_response(request: HttpRequest, extensions: str | None = None) -> bytes:
    """The ``101 Switching Protocols`` answer to a checked upgrade request, with the
    ``extensions`` the node accepted (a ``Sec-WebSocket-Extensions`` value), if any."""
    accept = generate_accept_token(request.header("sec-websocket-key").encode("ascii"))
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept.decode('ascii')}",
    ]
    offered = [p.strip() for p in request.header("sec-websocket-protocol").split(",")]
    if SUBPROTOCOL in offered:
        lines.append(f"Sec-WebSocket-Protocol: {SUBPROTOCOL}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

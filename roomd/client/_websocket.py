"""Opening the client's WebSocket over a stream, with permessage-deflate offered.

trio-websocket 0.12 takes no extensions for the opening request, although wsproto under it
implements permessage-deflate (RFC 7692). :func:`open_websocket` does what its
``wrap_client_stream`` does and puts the offer in the request before its reader task sends it.
A node that accepts compresses large messages (and a compressed push is one the node compressed
once for all its recipients); a node that declines, or an older one, is spoken to plainly.
"""

from __future__ import annotations

import dataclasses

import trio
from trio_websocket import WebSocketConnection
from wsproto import ConnectionType, WSConnection
from wsproto.extensions import PerMessageDeflate


async def open_websocket(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    *,
    extra_headers: list[tuple[bytes, bytes]],
    message_queue_size: int,
    compress: bool,
) -> WebSocketConnection:
    """A WebSocket client connection over ``stream`` once the node accepted the upgrade.

    Error handling: as trio-websocket's ``wrap_client_stream`` (``ConnectionRejected`` ...).
    """
    connection = WebSocketConnection(
        stream,
        WSConnection(ConnectionType.CLIENT),
        host=host,
        path=resource,
        client_extra_headers=extra_headers,
        message_queue_size=message_queue_size,
    )
    if compress:
        request = connection._initial_request
        assert request is not None
        # The node answers with no context takeover both ways: neither side keeps a window.
        offer = PerMessageDeflate(client_no_context_takeover=True, server_no_context_takeover=True)
        connection._initial_request = dataclasses.replace(request, extensions=[offer])
    nursery.start_soon(connection._reader_task)
    await connection._open_handshake.wait()
    return connection

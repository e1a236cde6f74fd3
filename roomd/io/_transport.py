"""One WebSocket connection on the server: a reader, a writer and a bounded outbox.

The transport owns the TCP stream after the HTTP upgrade. wsproto parses what the client sends;
what the node sends is queued as ready-made frame bytes (see :mod:`._wsframe`) in a bounded
outbox that a writer task drains, writing every queued frame in one ``send_all``.

Slow-consumer policy: a volatile frame is dropped when the outbox is over half full; a frame
that would overflow it first evicts the volatile frames queued; if it still does not fit, the
queue is discarded and the connection is closed with 4008. A client that stops reading therefore
costs at most ``max_bytes`` of memory and never blocks anyone else.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Final, cast

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import RemoteProtocolError as WsProtocolError

from .._stats import Stats
from ..protocol import CloseCode, close_info
from . import _wsframe

log = logging.getLogger("roomd.transport")

RECEIVE_SIZE: Final = 64 * 1024

MessageHandler = Callable[["Transport", bytes | str, bool], None]


class _Volatile(bytes):
    """A queued frame that may be evicted under pressure."""

    __slots__ = ()


class Transport:
    """A server-side WebSocket connection after the handshake.

    Resource handling: :meth:`run` owns the stream and both tasks; when it returns the stream is
    closed. :meth:`send_frame` and :meth:`close` never block and may be called from any task.

    Error handling: a broken stream, a protocol violation by the peer or an oversized message
    end :meth:`run` (the last two with a close frame: 1002, 1009); nothing propagates.
    """

    __slots__ = (
        "_close_timeout",
        "_closing",
        "_max_bytes",
        "_max_message",
        "_queue",
        "_queued_bytes",
        "_scope",
        "_stats",
        "_stream",
        "_wake",
        "_ws",
        "close_code",
        "close_reason",
        "last_ping",
        "last_seen",
        "nursery",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        stats: Stats,
        *,
        trailing: bytes = b"",
        max_message: int,
        max_bytes: int,
        close_timeout: float,
    ) -> None:
        self._stream = stream
        self._stats = stats
        self._ws = Connection(ConnectionType.SERVER, trailing_data=trailing)
        self._max_message = max_message
        self._max_bytes = max_bytes
        self._close_timeout = close_timeout
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._wake: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._closing = False
        self.close_code: int | None = None  # the code we sent, or the peer's
        self.close_reason = ""
        self.last_seen = trio.current_time()  # last time anything arrived
        self.last_ping = 0.0
        self.nursery: trio.Nursery | None = None  # for tasks that live as long as the connection

    # Sending ------------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    def send_frame(self, frame: bytes, volatile: bool = False) -> bool:
        """Queue a complete WebSocket frame; ``False`` if it was dropped (or we are closing)."""
        if self._closing:
            return False
        size = len(frame)
        if self._queued_bytes + size > self._max_bytes >> (1 if volatile else 0):
            if volatile:
                self._stats.dropped += 1
                return False
            self._evict_volatile()
            if self._queued_bytes + size > self._max_bytes:
                self.close(CloseCode.SLOW_CONSUMER, discard=True)
                return False
        self._queue.append(_Volatile(frame) if volatile else frame)
        self._queued_bytes += size
        self._stats.frames_out += 1
        if self._wake is not None:
            self._wake.set()
        return True

    def ping(self, now: float) -> None:
        """Queue a WebSocket ping (the heartbeat)."""
        self.last_ping = now
        self._enqueue_control(_wsframe.PING)

    def close(self, code: int, reason: str | None = None, *, discard: bool = False) -> None:
        """Start the close handshake with ``code``; ``discard`` drops what is still queued.

        The connection is torn down at the latest ``close_timeout`` seconds from now.
        """
        if self._closing:
            return
        self._closing = True
        self._stats.close_codes[code] += 1
        if reason is None:
            info = close_info(code)
            reason = info.reason if info is not None else ""
        self.close_code, self.close_reason = code, reason
        if discard:
            self._queue.clear()
            self._queued_bytes = 0
        if self._ws.state is ConnectionState.OPEN:
            self._enqueue_control(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._arm_deadline()
        if self._wake is not None:
            self._wake.set()

    def _enqueue_control(self, frame: bytes) -> None:
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._wake is not None:
            self._wake.set()

    def _evict_volatile(self) -> None:
        kept = collections.deque(f for f in self._queue if type(f) is not _Volatile)
        self._stats.dropped += len(self._queue) - len(kept)
        self._queue = kept
        self._queued_bytes = sum(len(f) for f in kept)

    # Running ------------------------------------------------------------------------------------

    async def run(self, on_message: MessageHandler) -> None:
        """Serve the connection until it is closed; ``on_message`` gets each complete message.

        ``on_message`` must not block: it runs in the reader, between two reads.
        """
        try:
            with trio.CancelScope() as self._scope:
                if self._closing:
                    self._arm_deadline()
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self._writer)
                    peer_gone = await self._reader(on_message)
                    self._closing = True
                    if peer_gone:
                        nursery.cancel_scope.cancel()
                    else:  # let the writer flush the close frame, within the deadline
                        self._arm_deadline()
                        if self._wake is not None:
                            self._wake.set()
        finally:
            self._closing = True
            await trio.aclose_forcefully(self._stream)

    def _arm_deadline(self) -> None:
        if self._scope is not None:
            deadline = trio.current_time() + self._close_timeout
            self._scope.deadline = min(self._scope.deadline, deadline)

    async def _writer(self) -> None:
        stream = self._stream
        while True:
            if not self._queue:
                if self._closing and self._ws.state is not ConnectionState.OPEN:
                    return  # the close frame is out
                self._wake = trio.Event()
                await self._wake.wait()
                self._wake = None
                continue
            batch, self._queue = self._queue, collections.deque()
            self._queued_bytes = 0
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._closing = True
                if self._scope is not None:
                    self._scope.cancel()
                return
            self._stats.bytes_out += len(data)

    async def _reader(self, on_message: MessageHandler) -> bool:
        """Read until the close handshake; ``True`` if the peer vanished without one."""
        ws = self._ws
        parts: list[bytes | bytearray | str] = []
        size = 0
        while ws.state not in (ConnectionState.CLOSED, ConnectionState.REMOTE_CLOSING):
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return True
            if not data:
                return True
            self.last_seen = trio.current_time()
            self._stats.bytes_in += len(data)
            ws.receive_data(cast(bytes, data))
            try:
                for event in ws.events():
                    if isinstance(event, TextMessage | BytesMessage):
                        if self._closing:
                            continue
                        chunk = event.data
                        size += _utf8_len(chunk) if isinstance(chunk, str) else len(chunk)
                        if size > self._max_message:
                            self.close(CloseCode.MESSAGE_TOO_BIG, discard=False)
                            parts.clear()
                            continue
                        parts.append(chunk)
                        if event.message_finished:
                            message = _join(parts)
                            parts, size = [], 0
                            self._stats.frames_in += 1
                            on_message(self, message, isinstance(event, BytesMessage))
                    elif isinstance(event, Ping):
                        self._enqueue_control(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if self.close_code is None:
                            self.close_code, self.close_reason = event.code, event.reason or ""
                        if _state(ws) is ConnectionState.REMOTE_CLOSING:
                            self._closing = True
                            self._enqueue_control(ws.send(event.response()))
                        return False
            except WsProtocolError as exc:
                log.debug("WebSocket protocol error from peer: %s", exc)
                self.close(CloseCode.PROTOCOL_ERROR, discard=True)
                return False
        return False


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _join(parts: list[bytes | bytearray | str]) -> bytes | str:
    if isinstance(parts[0], str):
        return "".join(p for p in parts if isinstance(p, str))
    return b"".join(p for p in parts if not isinstance(p, str))


def _state(ws: Connection) -> ConnectionState:
    """The connection's state, read afresh (it changes as events are processed)."""
    return ws.state

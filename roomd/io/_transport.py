"""One WebSocket connection on the server: a reader task, and writes without a writer task.

After the HTTP upgrade the transport takes the connection's socket out of its trio stream and
drives it with Trio's low-level I/O (``wait_readable`` / ``wait_writable`` on a non-blocking
socket). :class:`.ws.FrameParser` parses what the client sends; the close handshake's
states are kept here. What the node sends is queued as ready-made frame bytes (see
:mod:`roomd.ws`) in a bounded outbox.

Writing: queueing a frame marks the connection dirty with the node's :class:`Flusher`, one task
that, once the current burst of work yields, writes every dirty connection's whole outbox with one
``send`` each. A broadcast to a thousand connections thus wakes one task, not a thousand. Only
when the kernel's buffer is full does a connection get a task of its own, which waits until the
socket is writable, writes, and ends once the outbox is empty.

Over TLS (a :class:`~roomd.ws.TlsSession`), what is read is decrypted before it is parsed, and
each write encrypts the whole outbox at once: the frames are still the ones encoded once for all
recipients, and a connection still gets one ``send`` per round. Records not yet taken by the
kernel wait in the connection's ciphertext buffer, which counts in its outbox.

Slow-consumer policy: a volatile frame is dropped when the outbox is over half full; a frame
that would overflow it first evicts the volatile frames queued; if it still does not fit, the
queue is discarded and the connection is closed with 4008. A client that stops reading therefore
costs at most ``max_bytes`` of memory and never blocks anyone else.
"""

from __future__ import annotations

import collections
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, cast

import trio

from .. import ws
from ..protocol import CloseCode, close_info
from ._flusher import Flusher

log = logging.getLogger("roomd.transport")

RECEIVE_SIZE: Final = 64 * 1024
# A reader handles at most this many messages of what it read before letting every other task
# run (a scheduling round runs each ready task once: 100 connections that each received 500
# messages at once would otherwise hold the node for seconds, its timers and bus included).
MESSAGES_PER_TURN: Final = 32

MessageHandler = Callable[[Any, bytes | str, bool], None]
ControlHandler = Callable[[Any], None]

# The close handshake (RFC 6455, section 7).
OPEN, LOCAL_CLOSING, REMOTE_CLOSING, CLOSED = range(4)


class Counters(Protocol):
    """What a transport counts (the node's statistics provide these attributes)."""

    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    dropped: int  # volatile frames dropped for a slow consumer
    close_codes: collections.Counter[int]


class _Volatile(bytes):
    """A queued frame that may be evicted under pressure."""

    __slots__ = ()


class Transport:
    """A server-side WebSocket connection after the handshake.

    Resource handling: :meth:`run` owns the socket and the connection's tasks; when it returns
    the socket is closed. :meth:`send_frame` and :meth:`close` never block and may be called
    from any task.

    Error handling: a broken connection, a protocol violation by the peer or an oversized
    message end :meth:`run` (the last two with a close frame: 1002, 1009); nothing propagates.
    """

    __slots__ = (
        "_blocked",
        "_broken",
        "_cipher",
        "_close_timeout",
        "_closing",
        "_dirty",
        "_emptied",
        "_flusher",
        "_max_bytes",
        "_more",
        "_nursery",
        "_partial",
        "_pong",
        "_queue",
        "_queued_bytes",
        "_scope",
        "_sock",
        "_state",
        "_stats",
        "_tls",
        "_ws",
        "close_code",
        "close_reason",
        "last_ping",
        "last_seen",
    )

    def __init__(
        self,
        sock: socket.socket,
        stats: Counters,
        flusher: Flusher,
        *,
        trailing: bytes = b"",
        max_message: int,
        max_bytes: int,
        close_timeout: float,
        deflate: bool = False,
        tls: ws.TlsSession | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._tls = tls
        self._cipher = b""  # TLS records not yet taken by the kernel
        self._stats = stats
        self._flusher = flusher
        self._ws = ws.FrameParser(max_message, deflate=deflate)
        self._ws.feed(trailing)
        self._state = OPEN
        self._max_bytes = max_bytes
        self._close_timeout = close_timeout
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._pong: bytes | None = None  # the one pong not yet written (RFC 6455, 5.5.3)
        self._partial = False  # the queue's head is the unwritten rest of a frame
        self._dirty = False  # waiting in the flusher's list
        self._blocked = False  # the kernel buffer is full: a drain task owns writing
        self._broken = False  # writing failed: the peer is gone
        self._emptied: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._closing = False
        self._more = False  # messages remain buffered past a reader's turn
        self.close_code: int | None = None  # the code we sent, or the peer's
        self.close_reason = ""
        self.last_seen = trio.current_time()  # last time anything arrived
        self.last_ping = 0.0
        self._nursery: trio.Nursery | None = None  # for tasks that live as long as the connection

    # Sending ------------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet taken by the kernel (the outbox and a pending pong)."""
        return self._queued_bytes + (len(self._pong) if self._pong is not None else 0)

    def tls_wants_to_write(self) -> None:
        """Records the TLS layer made while reading (a key update ...) are written soon."""
        if self._tls is not None and self._tls.wants_to_write:
            self._mark_dirty()

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
        if not (self._dirty or self._blocked):
            self._dirty = True
            self._flusher.mark(self)
        return True

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the connection's nursery (not once the connection is done)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def ping(self, now: float) -> None:
        """Queue a WebSocket ping (the heartbeat)."""
        self.last_ping = now
        self._enqueue_control(ws.PING)

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
        if discard and not self._blocked:  # (a blocked queue may hold half a frame)
            self._queue.clear()
            self._queued_bytes = 0
        if self._state == OPEN:
            self._state = LOCAL_CLOSING
            self._enqueue_control(ws.close_frame(code, reason))
        self._arm_deadline()

    def _enqueue_control(self, frame: bytes) -> None:
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._mark_dirty()

    def _answer_ping(self, payload: bytes) -> None:
        """Queue the pong; one not yet written is replaced (RFC 6455 allows answering only the
        latest ping), so pings from a client that never reads cost no memory."""
        self._pong = ws.control(ws.OP_PONG, payload)
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not (self._dirty or self._blocked):
            self._dirty = True
            self._flusher.mark(self)

    def _evict_volatile(self) -> None:
        kept = [f for f in self._queue if type(f) is not _Volatile]
        self._stats.dropped += len(self._queue) - len(kept)
        self._queue = kept
        self._queued_bytes = sum(len(f) for f in kept)

    def flush(self) -> None:
        """Write as much of the outbox as the kernel takes now (called by the flusher)."""
        self._dirty = False
        if self._blocked or self._write():
            return  # a drain task owns writing, or everything is out
        self._blocked = True
        if self._nursery is not None:
            self._nursery.start_soon(self._drain)

    def _write(self) -> bool:
        """One ``send`` of everything queued; whether the outbox is empty afterwards."""
        if self._tls is not None:
            return self._write_tls(self._tls)
        queue = self._queue
        if self._pong is not None:  # ahead of what is queued, behind a half-written frame
            queue.insert(1 if self._partial else 0, self._pong)
            self._queued_bytes += len(self._pong)
            self._pong = None
        if not queue or self._broken:
            return True
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()  # (a list: an empty deque would keep a 600-byte block per connection)
        sent = self._send(data)
        if sent is None:
            return True
        if sent < len(data):
            rest = data[sent:]
            queue.append(rest)
            self._queued_bytes = len(rest)
            self._partial = True
            return False
        self._queued_bytes = 0
        self._partial = False
        if self._emptied is not None:
            self._emptied.set()
        return True

    def _send(self, data: bytes) -> int | None:
        """Give ``data`` to the kernel: how much it took (0 if its buffer is full), ``None`` if
        the socket broke."""
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._break()
            return None
        self._stats.bytes_out += sent
        return sent

    def _write_tls(self, tls: ws.TlsSession) -> bool:
        """:meth:`_write` over TLS: encrypt everything queued, one ``send`` of the records."""
        queue = self._queue
        if self._pong is not None:  # (over TLS the queue never holds half a frame)
            queue.insert(0, self._pong)
            self._pong = None
        if self._broken:
            return True
        if queue:
            tls.send(queue[0] if len(queue) == 1 else b"".join(queue))
            queue.clear()
        data = self._cipher + tls.outgoing()
        if not data:
            return True
        sent = self._send(data)
        if sent is None:
            return True
        self._cipher = data[sent:]
        self._queued_bytes = len(self._cipher)
        if self._cipher:
            return False
        if self._emptied is not None:
            self._emptied.set()
        return True

    async def _drain(self) -> None:
        """Wait for room in the kernel's buffer and write, until the outbox is empty.

        While it runs (``_blocked``) it alone writes: the flusher leaves the connection alone.
        """
        try:
            while not self._broken:
                await trio.lowlevel.wait_writable(self._sock)
                if self._write():
                    return
        finally:
            self._blocked = False

    def _break(self) -> None:
        self._broken = True
        self._closing = True
        self._queue.clear()
        self._queued_bytes = 0
        self._cipher = b""
        self._pong = None
        if self._scope is not None:
            self._scope.cancel()

    # Running ------------------------------------------------------------------------------------

    async def run(
        self, on_message: MessageHandler, owner: Any, on_control: ControlHandler | None = None
    ) -> None:
        """Serve the connection until it is closed; ``on_message(owner, message, binary)`` gets
        each complete message, ``on_control(owner)`` is told of each ping and pong (to count
        them in a rate, say).

        Neither may block: they run in the reader, between two reads.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                if self._closing:
                    self._arm_deadline()
                try:
                    peer_gone = await self._reader(on_message, owner, on_control)
                    self._closing = True
                    if not peer_gone:  # flush the close frame, within the deadline
                        self._arm_deadline()
                        while (self._queue or self._cipher) and not self._broken:
                            self._emptied = trio.Event()
                            await self._emptied.wait()
                    nursery.cancel_scope.cancel()
                finally:
                    self._nursery = None  # closed to new tasks from here on
        finally:
            self._closing = self._broken = True
            self._nursery = None
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    def _arm_deadline(self) -> None:
        if self._scope is not None:
            deadline = trio.current_time() + self._close_timeout
            self._scope.deadline = min(self._scope.deadline, deadline)

    def _handle_buffered(
        self, on_message: MessageHandler, owner: Any, on_control: ControlHandler | None
    ) -> bool | None:
        """Handle every complete frame received so far; ``False`` once the close handshake is
        done (or the peer broke the protocol), ``None`` to read on. (A method of its own, so
        that nothing of the last message stays referenced while the reader waits.)"""
        parser = self._ws
        turn = MESSAGES_PER_TURN
        try:
            while (item := parser.next()) is not None:
                opcode, payload = item
                if opcode <= ws.OP_BINARY:
                    if not self._closing:
                        self._stats.frames_in += 1
                        message = cast(bytes | str, payload)
                        on_message(owner, message, opcode == ws.OP_BINARY)
                    turn -= 1
                    if not turn:
                        self._more = True  # the rest after the others had their turn
                        return None
                elif opcode == ws.OP_PING or opcode == ws.OP_PONG:
                    if on_control is not None:
                        on_control(owner)
                    if opcode == ws.OP_PING and self._state == OPEN:
                        self._answer_ping(cast(bytes, payload))
                elif opcode == ws.OP_CLOSE:
                    code, reason = cast(tuple[int, str], payload)
                    if self.close_code is None:
                        self.close_code, self.close_reason = code, reason
                    if self._state == OPEN:  # the peer starts the close: answer it
                        self._closing = True
                        self._enqueue_control(ws.close_frame(code, reason))
                    self._state = CLOSED
                    return False
        except ws.FrameError as exc:
            # What earlier messages of the same read queued (their replies) goes out first.
            log.debug("WebSocket protocol error from peer: %s", exc)
            self.close(exc.code, exc.reason[:120])
            return False
        return None

    def _take_more(self) -> bool:
        """Whether messages remain buffered past the reader's last turn (and now it knows)."""
        more, self._more = self._more, False
        return more

    async def _reader(
        self, on_message: MessageHandler, owner: Any, on_control: ControlHandler | None
    ) -> bool:
        """Read until the close handshake; ``True`` if the peer vanished without one."""
        sock = self._sock
        while True:
            done = self._handle_buffered(on_message, owner, on_control)
            if done is not None:
                return done
            await trio.lowlevel.checkpoint()
            if self._take_more():
                continue
            while True:
                try:
                    data = sock.recv(RECEIVE_SIZE)
                    break
                except BlockingIOError:
                    pass  # (not awaited in the handler: the exception would live on meanwhile)
                except OSError:
                    return True
                await trio.lowlevel.wait_readable(sock)
            if not data:
                return True
            self.last_seen = trio.current_time()
            self._stats.bytes_in += len(data)
            if self._tls is not None:
                try:
                    data = self._tls.receive(data)
                except ws.TlsError as exc:
                    log.debug("TLS error from peer: %s", exc)
                    return True
                self.tls_wants_to_write()
                if self._tls.closed:  # close_notify: what came before it is still handled
                    self._ws.feed(data)
                    while self._handle_buffered(on_message, owner, on_control) is None:
                        if not self._take_more():
                            break
                    return True
            self._ws.feed(data)
            del data  # not kept alive while waiting for more

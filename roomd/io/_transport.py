"""WebSocket connections on the server: one reading task for all of them, and writes without a
writer task.

After the HTTP upgrade the transport takes the connection's socket out of its trio stream and
drives it directly as a non-blocking socket. :class:`.ws.FrameParser` parses what the client
sends; the close handshake's states are kept here. What the node sends is queued as ready-made
frame bytes (see :mod:`roomd.ws`) in a bounded outbox.

Reading: every connection's socket is registered once with :class:`Readers`, the node's one
reading task, which waits for any of them to be readable and reads each readable one in the
same wake-up. An idle connection is thus a socket, a parser and a few objects: no task, no
nursery, no coroutine frames (those cost more memory than the rest of a connection together,
see docs/performance.md). A connection gets a task and a nursery of its own when it has work
that waits (:meth:`Transport.spawn`: a cluster call for a new session, a handler that awaits,
writing to a full socket, the close handshake's deadline), for as long as that work lasts.

Writing: queueing a frame marks the connection dirty with the node's :class:`Flusher`, one task
that, once the current burst of work yields, writes every dirty connection's whole outbox with one
``send`` each. A broadcast to a thousand connections thus wakes one task, not a thousand. Only
when the kernel's buffer is full does a connection get a task, which waits until the socket is
writable, writes, and ends once the outbox is empty.

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
import os
import select
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
ClosedHandler = Callable[[Any], None]
# The reading task reads at most this many sockets per wake-up, and lets every other task run
# after each this many.
EVENTS_PER_WAKE: Final = 1024
SOCKETS_PER_TURN: Final = 64

# The close handshake (RFC 6455, section 7).
OPEN, LOCAL_CLOSING, REMOTE_CLOSING, CLOSED = range(4)


class Counters(Protocol):
    """What a transport counts (the node's statistics provide these attributes)."""

    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    dropped: int  # volatile frames dropped for a slow consumer
    reads_paused: int  # times a connection's reading was paused (see Transport.pause_reading)
    close_codes: collections.Counter[int]


class _Volatile(bytes):
    """A queued frame that may be evicted under pressure."""

    __slots__ = ()


class Transport:
    """A server-side WebSocket connection after the handshake.

    Resource handling: from :meth:`start` on, the transport owns the socket and the
    connection's tasks (they run in the :class:`Readers`' nursery); once the socket is closed
    it calls ``on_closed``. :meth:`send_frame` and :meth:`close` never block and may be called
    from any task.

    Error handling: a broken connection, a protocol violation by the peer or an oversized
    message end the connection (the last two with a close frame: 1002, 1009), and so does a
    defect in a handler or a spawned task (logged); nothing propagates.
    """

    __slots__ = (
        "_blocked",
        "_broken",
        "_cipher",
        "_close_timeout",
        "_closing",
        "_dirty",
        "_done",
        "_emptied",
        "_ended",
        "_fd",
        "_flusher",
        "_max_bytes",
        "_more",
        "_nursery",
        "_on_closed",
        "_on_control",
        "_on_message",
        "_owner",
        "_partial",
        "_paused",
        "_pong",
        "_queue",
        "_queued_bytes",
        "_readers",
        "_sock",
        "_starting",
        "_state",
        "_stats",
        "_tls",
        "_todo",
        "_torn",
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
        readers: Readers,
        *,
        trailing: bytes = b"",
        max_message: int,
        max_bytes: int,
        close_timeout: float,
        deflate: bool = False,
        tls: ws.TlsSession | None = None,
    ) -> None:
        if sock.getblocking():
            sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._readers = readers
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
        self._closing = False
        self._more = False  # messages remain buffered past a reader's turn
        self._ended = False  # reading is over
        self._paused = False  # the node reads nothing more until :meth:`resume_reading`
        self._done = False  # the connection's tasks are cancelled, its socket closes
        self._torn = False  # the socket is closed, ``on_closed`` called
        self._on_message: MessageHandler | None = None  # (set by :meth:`start`)
        self._on_control: ControlHandler | None = None
        self._on_closed: ClosedHandler | None = None
        self._owner: Any = None
        self.close_code: int | None = None  # the code we sent, or the peer's
        self.close_reason = ""
        self.last_seen = trio.current_time()  # last time anything arrived
        self.last_ping = 0.0
        # The connection's task and nursery, while it has work (see :meth:`spawn`).
        self._nursery: trio.Nursery | None = None
        self._starting = False  # its task is started and has not run yet
        self._todo: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] | None = None

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
        if self._on_message is not None:  # (started: else :meth:`start` arms it)
            self.spawn(self._close_timer)

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
        self.spawn(self._drain)

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
        self._end(peer_gone=True)

    # Running ------------------------------------------------------------------------------------

    async def start(
        self,
        on_message: MessageHandler,
        owner: Any,
        on_control: ControlHandler | None = None,
        on_closed: ClosedHandler | None = None,
    ) -> None:
        """Serve the connection from now on, without a task of its own while it is idle;
        returns at once. ``on_message(owner, message, binary)`` gets each complete message,
        ``on_control(owner)`` is told of each ping and pong (to count them in a rate, say),
        ``on_closed(owner)`` is called once the socket is closed.

        None of them may block: the first two run in the node's reading task (:class:`Readers`)
        between two reads. What arrived with the handshake is handled here, a turn at a time.
        """
        self._serve_with(on_message, owner, on_control, on_closed)
        try:
            while not self._ended and self._handle():
                await trio.lowlevel.checkpoint()
        except BaseException:  # cancelled: the socket is closed, ``on_closed`` called
            self.abort()
            raise
        self._read_from_now()

    def start_idle(
        self,
        on_message: MessageHandler,
        owner: Any,
        on_control: ControlHandler | None = None,
        on_closed: ClosedHandler | None = None,
    ) -> None:
        """:meth:`start` for a transport that received nothing after the handshake (nothing
        to handle first, so nothing to wait for)."""
        if self._ws.buffered:
            raise RuntimeError("bytes came with the handshake: start() handles them")
        self._serve_with(on_message, owner, on_control, on_closed)
        self._read_from_now()

    def _serve_with(
        self,
        on_message: MessageHandler,
        owner: Any,
        on_control: ControlHandler | None,
        on_closed: ClosedHandler | None,
    ) -> None:
        self._on_message, self._owner, self._on_control = on_message, owner, on_control
        self._on_closed = on_closed
        if self._closing and not self._ended:  # closed before it started
            self.spawn(self._close_timer)

    def _read_from_now(self) -> None:
        if not self._ended and not self._readers.add(self):
            self.abort()  # the node stops (its readers already have): closed at once

    async def run(
        self, on_message: MessageHandler, owner: Any, on_control: ControlHandler | None = None
    ) -> None:
        """:meth:`start`, and wait until the connection is closed (cancelled: it is closed at
        once)."""
        closed = trio.Event()
        try:
            await self.start(on_message, owner, on_control, lambda _owner: closed.set())
            await closed.wait()
        finally:
            self.abort()

    def abort(self) -> None:
        """Done, whatever is queued: the connection's tasks are cancelled and its socket
        closed (at once, or as its task ends)."""
        self._ended = self._done = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # its task closes the socket as it ends
        elif not self._starting:
            self._teardown()

    def _end(self, peer_gone: bool) -> None:
        """Reading is over: the close handshake is done, the peer broke the protocol (then a
        close frame is queued: it is flushed first, within the close timeout) or vanished."""
        if self._ended:
            return
        self._ended = self._closing = True
        self._readers.forget(self)
        if peer_gone or self._broken or not (self._queue or self._cipher):
            self.abort()
        else:
            self.spawn(self._flush_then_finish)

    async def _flush_then_finish(self) -> None:
        with trio.move_on_after(self._close_timeout):
            while (self._queue or self._cipher) and not self._broken:
                self._emptied = trio.Event()
                await self._emptied.wait()
        self.abort()

    async def _close_timer(self) -> None:
        """A connection we close is torn down ``close_timeout`` after, answered or not."""
        await trio.sleep(self._close_timeout)
        self.abort()

    def _teardown(self) -> None:
        if self._torn:
            return
        self._torn = self._ended = self._done = True
        self._closing = self._broken = True
        self._readers.forget(self)
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        self._queue.clear()
        self._queued_bytes = 0
        self._cipher = b""
        self._pong = None
        on_closed, owner = self._on_closed, self._owner
        self._on_message = self._on_control = self._on_closed = self._owner = None
        if on_closed is not None:
            try:
                on_closed(owner)
            except Exception:  # a defect: it must not end the task that closed the socket
                log.exception("closing connection %r failed", owner)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the connection's nursery (not once the connection is done).

        The nursery lives while the connection has work: its task starts when something is
        spawned and ends when the last of it is done. An idle connection has no task at all.
        """
        if self._done:
            return
        if self._nursery is not None:
            try:
                self._nursery.start_soon(fn, *args)
                return
            except RuntimeError:  # it is closing to new arrivals: a new one takes this
                pass
        if self._todo is None:
            self._todo = []
        self._todo.append((fn, args))
        if not self._starting:
            self._start_task()

    def _start_task(self) -> None:
        self._starting = True
        if not self._readers.start_task(self._work):  # the node is stopping
            self._starting = False
            self.abort()

    async def _work(self) -> None:
        """The connection's task, while it has work: a nursery for what was spawned."""
        nursery: trio.Nursery | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._starting = False
                if self._done:
                    nursery.cancel_scope.cancel()
                todo, self._todo = self._todo or [], None
                for fn, args in todo[1:]:
                    nursery.start_soon(fn, *args)
                if todo:  # the first in this very task (usually the only one: a task less)
                    fn, args = todo[0]
                    await fn(*args)
        except Exception:  # a defect: it ends this connection, never the node
            log.exception("connection %r failed; it is closed", self._owner)
            self._ended = self._done = True
        finally:
            self._starting = False
            if self._nursery is nursery:
                self._nursery = None
            if self._done:
                self._teardown()
            elif self._todo:  # spawned while the nursery was closing
                self._start_task()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        """Read and handle nothing more from the peer until :meth:`resume_reading`: what it
        sends waits in the kernel's buffers, then in its own (TCP's flow control). What was
        read already waits in the parser. Pings wait too; the heartbeat sweep leaves a paused
        connection alone."""
        if self._paused or self._ended:
            return
        self._paused = True
        self._stats.reads_paused += 1
        self._readers.pause(self)

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self.last_seen = trio.current_time()  # (nothing was read meanwhile: not its silence)
        if not self._ended:
            self._readers.resume(self)

    def _turn(self, now: float, read: bool) -> None:
        """One read (if ``read``) and a turn of handling what is buffered; called by the
        reading task when the socket is readable or messages wait past a turn."""
        if self._paused:
            return
        if read:
            if self._more:  # a turn of what is buffered comes first
                return
            try:
                data = self._sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self._end(peer_gone=True)
                return
            if not data:
                self._end(peer_gone=True)
                return
            self.last_seen = now
            self._stats.bytes_in += len(data)
            if self._tls is not None:
                try:
                    data = self._tls.receive(data)
                except ws.TlsError as exc:
                    log.debug("TLS error from peer: %s", exc)
                    self._end(peer_gone=True)
                    return
                self.tls_wants_to_write()
                if self._tls.closed:  # close_notify: what came before it is still handled
                    self._ws.feed(data)
                    while self._handle_buffered() is None and self._take_more():
                        pass
                    self._end(peer_gone=True)
                    return
            self._ws.feed(data)
            del data  # not kept alive while waiting for more
        if self._handle():
            self._more = True  # queued for a turn after every other task had one
            self._readers.again(self)

    def _handle(self) -> bool:
        """A turn of handling what is buffered; whether messages remain past it."""
        try:
            done = self._handle_buffered()
        except Exception:  # a defect: it ends this connection, never the node
            log.exception("connection %r failed; it is closed", self._owner)
            self.abort()
            return False
        if done is not None:
            self._end(peer_gone=done)
            return False
        return self._take_more()

    def _handle_buffered(self) -> bool | None:
        """Handle every complete frame received so far; ``False`` once the close handshake is
        done (or the peer broke the protocol), ``None`` to read on. (A method of its own, so
        that nothing of the last message stays referenced while the reader waits.)"""
        parser = self._ws
        on_message, owner, on_control = self._on_message, self._owner, self._on_control
        turn = MESSAGES_PER_TURN
        try:
            while not self._paused and (item := parser.next()) is not None:
                opcode, payload = item
                if opcode <= ws.OP_BINARY:
                    if not self._closing:
                        self._stats.frames_in += 1
                        message = cast(bytes | str, payload)
                        on_message(owner, message, opcode == ws.OP_BINARY)  # type: ignore[misc]
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
        """Whether messages remain buffered past the last turn (and now it knows)."""
        more, self._more = self._more, False
        return more

    @property
    def fd(self) -> int:
        return self._fd


_CLOSED_EPOLL: Final = select.epoll()
_CLOSED_EPOLL.close()


class Readers:
    """The node's one reading task: it reads every connection's socket when it is readable.

    Connections are registered once in an epoll set of their own (level-triggered, so a
    registration persists: no system call per wait), which the task waits on through Trio.
    One wake-up reads every socket that is readable then, each once, and handles a turn of each
    one's messages (:data:`MESSAGES_PER_TURN`); what is left past a turn is handled after
    every other task has run once. An idle connection thus costs no task, no nursery and no
    coroutine frame: a connection has a task only while it has work of its own
    (:meth:`Transport.spawn`), which runs in this object's nursery.

    Resource handling: :meth:`run` owns the epoll set and every connection's task; when it
    ends (cancelled, as the node stops), every connection still registered is closed.
    """

    def __init__(self) -> None:
        # Made as it runs, closed as it stops: the set, and an eventfd in it (see _poke).
        self._epoll = _CLOSED_EPOLL
        self._wake = -1
        self._poked = False
        self._by_fd: dict[int, Transport] = {}
        self._more: list[Transport] = []
        self._nursery: trio.Nursery | None = None

    def __len__(self) -> int:
        return len(self._by_fd)

    def add(self, transport: Transport) -> bool:
        """Read ``transport`` from now on; ``False`` if the readers are not running."""
        if self._nursery is None:
            return False
        self._by_fd[transport.fd] = transport
        if not transport.paused:
            self._epoll.register(transport.fd, select.EPOLLIN)
        return True

    def pause(self, transport: Transport) -> None:
        """Out of the set while paused (with no events asked for, epoll would still report a
        hang-up, again and again: a peer that leaves meanwhile is noticed on resuming)."""
        if self._by_fd.get(transport.fd) is transport:
            self._epoll.unregister(transport.fd)

    def resume(self, transport: Transport) -> None:
        """Read ``transport`` again, starting with what waits in its parser."""
        if self._by_fd.get(transport.fd) is transport:
            self._epoll.register(transport.fd, select.EPOLLIN)
            transport._more = True
            self._more.append(transport)
            self._poke()

    def _poke(self) -> None:
        """Wake the reading task if it waits (it may wait for sockets while ``_more`` holds a
        connection to handle)."""
        if not self._poked:
            self._poked = True
            os.eventfd_write(self._wake, 1)

    def forget(self, transport: Transport) -> None:
        if self._by_fd.get(transport.fd) is transport:
            del self._by_fd[transport.fd]
            if not transport.paused:
                self._epoll.unregister(transport.fd)

    def again(self, transport: Transport) -> None:
        """``transport`` has messages buffered past its turn: handled in the next pass."""
        self._more.append(transport)

    def start_task(self, fn: Callable[[], Awaitable[None]]) -> bool:
        """Start ``fn()`` in the nursery of the connections' tasks; ``False`` if not running."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poked = False
        self._epoll.register(self._wake, select.EPOLLIN)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._read()
        finally:
            self._nursery = None
            for transport in list(self._by_fd.values()):
                transport.abort()
            for transport in self._more:
                transport.abort()
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()
            os.close(self._wake)
            self._epoll, self._wake = _CLOSED_EPOLL, -1

    async def _read(self) -> None:
        epoll, by_fd = self._epoll, self._by_fd
        fileno = epoll.fileno()
        while True:
            if self._more:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(fileno)
            now = trio.current_time()
            handled = 0
            more, self._more = self._more, []
            for transport in more:  # first what waited past its turn, then what is readable
                transport._more = False
                if not transport._ended:
                    transport._turn(now, False)
                    handled += 1
                    if handled % SOCKETS_PER_TURN == 0:  # a long pass lets the others run
                        await trio.lowlevel.checkpoint()
                        now = trio.current_time()
            for fd, _ in epoll.poll(0, EVENTS_PER_WAKE):
                if fd == self._wake:
                    os.eventfd_read(self._wake)
                    self._poked = False
                    continue
                transport_ = by_fd.get(fd)
                if transport_ is not None:
                    transport_._turn(now, True)
                    handled += 1
                    if handled % SOCKETS_PER_TURN == 0:
                        await trio.lowlevel.checkpoint()
                        now = trio.current_time()

"""What a node does with each frame a client sends: the handshake, events, acks, pings.

Built-in events run in the connection's reader (they never await); application handlers and
room sends with acknowledgements run in a per-connection event worker, in order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._config import Config
from ..cluster import Position, user_stream
from ..hub import Connection
from ..protocol import (
    PROTOCOL_VERSION,
    Ack,
    CloseCode,
    Error,
    ErrorCode,
    ErrorInfo,
    Event,
    HeartbeatInfo,
    Hello,
    LimitsInfo,
    Ping,
    Pong,
    RemoteProtocolError,
    ResumeRequest,
    RoomdError,
    StreamPosition,
    Welcome,
    decode_client_frame,
)
from ._builtins import Builtins, Later, wants_ack
from ._requests import Waiter
from ._router import Router
from ._sessions import Outcome, ResumeRefused, Sessions
from ._stats import Stats

log = logging.getLogger("roomd.node")

Handler = Callable[[Any, Any], Awaitable[Any]]  # (context, data) -> the ack's result
ContextFactory = Callable[[Connection], Any]


class FrameDispatcher:
    """Handles the frames of a node's connections; holds the application's event handlers.

    ``context`` makes what an application handler receives besides the data (the node's
    :class:`~roomd.Context`) for a connection.
    """

    def __init__(
        self,
        name: str,
        config: Config,
        stats: Stats,
        router: Router,
        builtins: Builtins,
        sessions: Sessions,
        context: ContextFactory,
    ) -> None:
        self.name = name
        self.config = config
        self.limits = config.limits
        self.stats = stats
        self.router = router
        self.builtins = builtins
        self.sessions = sessions
        self.streams = sessions.streams
        self.context = context
        self.handlers: dict[str, Handler] = {}
        self.max_depth = config.limits.max_depth

    def on_message(self, conn: Connection, raw: bytes | str, binary: bool) -> None:
        """One complete message from ``client`` (called by its transport's reader).

        Error handling: nothing escapes. A frame whose handling fails unexpectedly (any
        exception, a ``RecursionError`` or a ``MemoryError`` included) ends its connection with
        1011 and is logged with a reference the client is told; the node serves on.
        """
        try:
            self._on_message(conn, raw, binary)
        except Exception:
            self.failed(conn, f"a {'binary' if binary else 'text'} frame")

    def on_control(self, conn: Connection) -> None:
        """A ping or pong from ``client``: it counts in the rate like every frame. (Its pong
        needs no refusal: the transport keeps at most one unsent.)"""
        limiter = conn.limiter
        over = not limiter.take(trio.current_time())
        if over and limiter.strikes > self.limits.max_strikes:
            conn.close(CloseCode.RATE_LIMITED)

    def failed(self, conn: Connection, what: str) -> None:
        """Handling ``what`` for ``client`` raised: log it with a reference, close 1011."""
        ref = secrets.token_hex(4)
        log.exception("handling %s of %r failed (ref %s); closing it with 1011", what, conn, ref)
        self.stats.errors[ErrorCode.INTERNAL] += 1
        with contextlib.suppress(Exception):
            conn.send(Error(ErrorCode.INTERNAL, f"internal error (ref {ref})"))
        conn.close(CloseCode.INTERNAL_ERROR, f"internal error (ref {ref})")

    def _on_message(self, conn: Connection, raw: bytes | str, binary: bool) -> None:
        limiter = conn.limiter
        if not limiter.take(trio.current_time()):
            self._refuse_rate(conn, raw, binary)
            return
        handshaking = not conn.session.is_open
        if handshaking:
            conn.binary = binary  # until the hello, answer in the encoding of each frame
        try:
            frame = decode_client_frame(raw, binary, self.max_depth)
            conn.session.receive(frame)
        except RemoteProtocolError as exc:
            if handshaking and exc.close_code is None:
                exc.close_code = CloseCode.BAD_HANDSHAKE  # an undecodable first frame
            self._report(conn, exc)
            return
        if isinstance(frame, Event):
            self._on_event_frame(conn, frame)
        elif isinstance(frame, Ping):
            conn.send(Pong(frame.ts, time.time()))
        elif isinstance(frame, Ack):
            waiter: Waiter | None = conn.pending.get(frame.id)
            if waiter is not None:
                waiter.ack = frame
                waiter.event.set()
        elif isinstance(frame, Hello):
            self._welcome(conn, frame, binary)

    def _welcome(self, conn: Connection, hello: Hello, binary: bool) -> None:
        """Open a session, or continue one (``hello.resume``). Pushes to the connection are
        held until its welcome is out (and, for a resumed session, what it missed)."""
        conn.binary = binary
        conn.hold()
        if hello.resume is not None:
            conn.outlet.spawn(self._resume, conn, hello.resume)
            return
        self.router.opened(conn)
        inbox = self.streams.opening(user_stream(conn.user), self._read_here(conn))
        if inbox is None:
            conn.outlet.spawn(self._open, conn, None)
        else:
            self._send_welcome(conn, inbox=inbox)

    async def _open(self, conn: Connection, reason: str | None) -> None:
        """A new session: welcomed at once where this node can say where its inbox stands
        (it numbers it, reads it already, or its sequencer learns of the session from
        presence: see ``StreamService.opening``); else with its position at the sequencer,
        asked first (a node of an earlier version)."""
        stream = user_stream(conn.user)
        inbox = self.streams.opening(stream, self._read_here(conn))
        if inbox is None:
            try:
                inbox = await self.streams.tail(stream)
            except RoomdError as exc:
                log.warning("%s: no inbox position for %s: %s", self.name, conn.user, exc)
            else:
                self.streams.follow(stream, inbox)
        self._send_welcome(conn, inbox=inbox, reason=reason)

    def _read_here(self, conn: Connection) -> bool:
        """Whether ``conn``'s user has another session on this node (which reads its inbox)."""
        return len(self.router.hub.user_connections(conn.user)) > 1

    async def _resume(self, conn: Connection, request: ResumeRequest) -> None:
        try:
            await self.sessions.take(conn, request)
        except ResumeRefused as refused:
            self.stats.resumes[refused.reason] += 1
            self.router.opened(conn)
            await self._open(conn, refused.reason)
            return
        outcome = await self.sessions.replay(conn, request)
        self.stats.resumes["resumed"] += 1
        self._send_welcome(conn, outcome=outcome)

    def _send_welcome(
        self,
        conn: Connection,
        *,
        inbox: Position | None = None,
        outcome: Outcome | None = None,
        reason: str | None = None,
    ) -> None:
        cfg = self.config
        session = conn.session
        if not session.began:  # (a new session; a resumed one keeps when it began)
            session.began = time.time()
        session.resume_token = self.sessions.token_for(session.id, session.user, session.began)
        conn.send(
            Welcome(
                v=PROTOCOL_VERSION,
                session=session.id,
                resume_token=session.resume_token,
                node=self.name,
                user=session.user,
                heartbeat=HeartbeatInfo(cfg.heartbeat.interval, cfg.heartbeat.timeout),
                limits=LimitsInfo(
                    max_frame_bytes=cfg.limits.max_frame_bytes,
                    rate=cfg.limits.rate,
                    burst=cfg.limits.burst,
                    max_rooms=cfg.limits.max_rooms_per_connection,
                    max_text_chars=cfg.limits.max_text_chars,
                ),
                resumed=outcome is not None,
                seq=session.seq,
                reason=reason,
                replayed=len(outcome.pushes) if outcome is not None else 0,
                gaps=(outcome.gaps or None) if outcome is not None else None,
                inbox_gap=outcome.inbox_gap if outcome is not None else False,
                inbox=StreamPosition(inbox.epoch, inbox.offset) if inbox is not None else None,
            )
        )
        if outcome is not None:
            for template in outcome.pushes:
                conn.send_push(template)
        conn.release(outcome.offsets if outcome is not None else {})

    def _refuse_rate(self, conn: Connection, raw: bytes | str, binary: bool) -> None:
        if conn.limiter.strikes > self.limits.max_strikes:
            conn.close(CloseCode.RATE_LIMITED)
            return
        ref: int | None = None
        if len(raw) < 256:  # cheap best effort: tell which event was refused
            try:
                frame = decode_client_frame(raw, binary, self.max_depth)
                ref = frame.id if isinstance(frame, Event | Ack) else None
            except RemoteProtocolError:
                pass
        limits = self.limits
        message = f"more than {limits.rate:g} frames/s (burst {limits.burst})"
        self._report(conn, RemoteProtocolError(ErrorCode.RATE_LIMITED, message, ref=ref))

    def _report(self, conn: Connection, exc: RemoteProtocolError) -> None:
        """Tell the client about a refused frame; close if the error requires it.

        Frames refused before they are handled (undecodable, rate-limited ...) get an ``error``
        frame whose ``ref`` is the frame's id: a client fails the pending call with that id.
        """
        self.stats.errors[exc.code] += 1
        conn.send(Error(exc.code, exc.message, exc.ref))
        if exc.close_code is not None:
            conn.close(exc.close_code)

    def _on_event_frame(self, conn: Connection, event: Event) -> None:
        """Handle a built-in event at once, or queue it for the connection's event worker.

        Application handlers may await (even a request to this very client), so they run in a
        worker task of the connection, never in its reader. Events stay in order: while the
        worker has anything queued, built-in events queue behind it.
        """
        if conn.inflight == 0 and event.event in self.builtins.table and not wants_ack(event):
            self._handle_builtin(conn, event)
            return
        limit = self.limits.max_inflight_events
        if conn.inflight >= limit:  # queued or running: the channel never fills
            self.stats.errors[ErrorCode.BUSY] += 1
            self._answer_error(conn, event, ErrorCode.BUSY, "too many events in flight")
            return
        if conn.events is None:
            send, receive = trio.open_memory_channel[Event](limit)
            conn.events = send
            conn.outlet.spawn(self._event_worker, conn, receive)
        conn.events.send_nowait(event)
        conn.inflight += 1

    async def _event_worker(
        self, conn: Connection, events: trio.MemoryReceiveChannel[Event]
    ) -> None:
        async for event in events:
            try:
                if wants_ack(event):
                    await self._handle_app_event(conn, event, self.builtins.send_with_ack)
                elif event.event in self.builtins.table:
                    self._handle_builtin(conn, event)
                else:
                    await self._handle_app_event(conn, event)
            except Exception:
                self.failed(conn, f"event {event.event!r}")
                return
            finally:
                conn.inflight -= 1

    def _handle_builtin(self, conn: Connection, event: Event) -> None:
        if self._replayed(conn, event):
            return
        try:
            result = self.builtins.table[event.event](conn, event.data, event.cmid)
        except RoomdError as exc:
            self._fail(conn, event, exc)
            return
        if isinstance(result, Later):
            conn.waiting += 1
            if conn.waiting == self.limits.max_waiting_events:
                conn.outlet.pause_reading()  # (a flood waits in TCP, not in this node)
            result.then(functools.partial(self._settled, conn, event))
        else:
            self._succeed(conn, event, result)

    def _settled(
        self, conn: Connection, event: Event, result: Any, error: RoomdError | None
    ) -> None:
        conn.waiting -= 1
        if conn.waiting == self.limits.max_waiting_events // 2:
            conn.outlet.resume_reading()
        if error is not None:
            self._fail(conn, event, error)
        else:
            self._succeed(conn, event, result)

    async def _handle_app_event(
        self,
        conn: Connection,
        event: Event,
        builtin: Callable[[Connection, Any, str | None], Awaitable[Any]] | None = None,
    ) -> None:
        if self._replayed(conn, event):
            return
        handler = self.handlers.get(event.event)
        try:
            if builtin is not None:
                result = await builtin(conn, event.data, event.cmid)
            elif handler is None:
                raise RemoteProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event {event.event!r}")
            else:
                result = await handler(self.context(conn), event.data)
        except RoomdError as exc:
            self._fail(conn, event, exc)
            return
        except Exception:
            log.exception("handler for %r failed", event.event)
            self._fail(conn, event, RoomdError(ErrorCode.INTERNAL, "internal error"))
            return
        self._succeed(conn, event, result)

    def _replayed(self, conn: Connection, event: Event) -> bool:
        """Answer a repeated client message id with the original result."""
        if event.cmid is None:
            return False
        seen, result = conn.session.seen(event.cmid)
        if seen and event.id is not None:
            conn.send(Ack(event.id, result))
        return seen

    def _succeed(self, conn: Connection, event: Event, result: Any) -> None:
        if event.cmid is not None:
            conn.session.remember(event.cmid, result)
        if event.id is not None:
            try:
                conn.send(Ack(event.id, result))
            except TypeError:
                log.error("handler for %r returned a result with no JSON form", event.event)
                self._answer_error(conn, event, ErrorCode.INTERNAL, "internal error")

    def _fail(self, conn: Connection, event: Event, exc: RoomdError) -> None:
        self.stats.errors[exc.code] += 1
        self._answer_error(conn, event, exc.code, exc.message)

    def _answer_error(self, conn: Connection, event: Event, code: str, message: str) -> None:
        if event.id is not None:
            conn.send(Ack(event.id, error=ErrorInfo(code, message)))
        else:
            conn.send(Error(code, message))

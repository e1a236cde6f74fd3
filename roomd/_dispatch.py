"""What a node does with each frame a client sends: the handshake, events, acks, pings.

Built-in events run in the connection's reader (they never await); application handlers and
room sends with acknowledgements run in a per-connection event worker, in order.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ._builtins import BUILTINS, AsyncBuiltin, send_with_ack, wants_ack
from ._requests import Context
from .cluster._view import Online
from .hub import Client
from .io._transport import Transport
from .protocol import (
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
    RoomdError,
    Welcome,
    decode_client_frame,
)

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger("roomd.node")

Handler = Callable[[Context, Any], Awaitable[Any]]


class Dispatcher:
    """Handles the frames of a node's clients; holds the application's event handlers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.handlers: dict[str, Handler] = {}
        self.max_depth = node.config.limits.max_depth

    def on_message(self, client: Client, raw: bytes | str, binary: bool) -> None:
        """One complete message from ``client`` (called by its transport's reader).

        Error handling: nothing escapes. A frame whose handling fails unexpectedly (any
        exception, a ``RecursionError`` or a ``MemoryError`` included) ends its connection with
        1011 and is logged with a reference the client is told; the node serves on.
        """
        try:
            self._on_message(client, raw, binary)
        except Exception:
            self.failed(client, f"a {'binary' if binary else 'text'} frame")

    def on_control(self, client: Client) -> None:
        """A ping or pong from ``client``: it counts in the rate like every frame. (Its pong
        needs no refusal: the transport keeps at most one unsent.)"""
        limiter = client.limiter
        over = not limiter.take(trio.current_time())
        if over and limiter.strikes > self.node.config.limits.max_strikes:
            client.close(CloseCode.RATE_LIMITED)

    def failed(self, client: Client, what: str) -> None:
        """Handling ``what`` for ``client`` raised: log it with a reference, close 1011."""
        ref = secrets.token_hex(4)
        log.exception("handling %s of %r failed (ref %s); closing it with 1011", what, client, ref)
        self.node.stats.errors[ErrorCode.INTERNAL] += 1
        with contextlib.suppress(Exception):
            client.send(Error(ErrorCode.INTERNAL, f"internal error (ref {ref})"))
        client.close(CloseCode.INTERNAL_ERROR, f"internal error (ref {ref})")

    def _on_message(self, client: Client, raw: bytes | str, binary: bool) -> None:
        limiter = client.limiter
        if not limiter.take(trio.current_time()):
            self._refuse_rate(client, raw, binary)
            return
        handshaking = not client.session.is_open
        if handshaking:
            client.binary = binary  # until the hello, answer in the encoding of each frame
        try:
            frame = decode_client_frame(raw, binary, self.max_depth)
            client.session.receive(frame)
        except RemoteProtocolError as exc:
            if handshaking and exc.close_code is None:
                exc.close_code = CloseCode.BAD_HANDSHAKE  # an undecodable first frame
            self._report(client, exc)
            return
        if isinstance(frame, Event):
            self._on_event_frame(client, frame)
        elif isinstance(frame, Ping):
            client.send(Pong(frame.ts, time.time()))
        elif isinstance(frame, Ack):
            waiter = client.pending.get(frame.id)
            if waiter is not None:
                waiter.ack = frame
                waiter.event.set()
        elif isinstance(frame, Hello):
            self._welcome(client, binary)

    def _welcome(self, client: Client, binary: bool) -> None:
        client.binary = binary
        cfg = self.node.config
        session = client.session
        self.node._local(Online(client.user, self.node.hub.add(client)))
        client.send(
            Welcome(
                v=PROTOCOL_VERSION,
                session=session.id,
                resume_token=session.resume_token,
                node=self.node.name,
                user=session.user,
                heartbeat=HeartbeatInfo(cfg.heartbeat.interval, cfg.heartbeat.timeout),
                limits=LimitsInfo(
                    max_frame_bytes=cfg.limits.max_frame_bytes,
                    rate=cfg.limits.rate,
                    burst=cfg.limits.burst,
                    max_rooms=cfg.limits.max_rooms_per_connection,
                    max_text_chars=cfg.limits.max_text_chars,
                ),
                resumed=False,
                seq=session.seq,
            )
        )

    def _refuse_rate(self, client: Client, raw: bytes | str, binary: bool) -> None:
        if client.limiter.strikes > self.node.config.limits.max_strikes:
            client.close(CloseCode.RATE_LIMITED)
            return
        ref: int | None = None
        if len(raw) < 256:  # cheap best effort: tell which event was refused
            try:
                frame = decode_client_frame(raw, binary, self.max_depth)
                ref = frame.id if isinstance(frame, Event | Ack) else None
            except RemoteProtocolError:
                pass
        limits = self.node.config.limits
        message = f"more than {limits.rate:g} frames/s (burst {limits.burst})"
        self._report(client, RemoteProtocolError(ErrorCode.RATE_LIMITED, message, ref=ref))

    def _report(self, client: Client, exc: RemoteProtocolError) -> None:
        """Tell the client about a refused frame; close if the error requires it.

        Frames refused before they are handled (undecodable, rate-limited ...) get an ``error``
        frame whose ``ref`` is the frame's id: a client fails the pending call with that id.
        """
        self.node.stats.errors[exc.code] += 1
        client.send(Error(exc.code, exc.message, exc.ref))
        if exc.close_code is not None:
            client.close(exc.close_code)

    def _on_event_frame(self, client: Client, event: Event) -> None:
        """Handle a built-in event at once, or queue it for the connection's event worker.

        Application handlers may await (even a request to this very client), so they run in a
        worker task of the connection, never in its reader. Events stay in order: while the
        worker has anything queued, built-in events queue behind it.
        """
        if client.inflight == 0 and event.event in BUILTINS and not wants_ack(event):
            self._handle_builtin(client, event)
            return
        limit = self.node.config.limits.max_inflight_events
        if client.inflight >= limit:  # queued or running: the channel never fills
            self.node.stats.errors[ErrorCode.BUSY] += 1
            self._answer_error(client, event, ErrorCode.BUSY, "too many events in flight")
            return
        if client.events is None:
            transport = client.outlet
            assert isinstance(transport, Transport) and transport.nursery is not None
            send, receive = trio.open_memory_channel[Event](limit)
            client.events = send
            transport.nursery.start_soon(self._event_worker, client, receive)
        client.events.send_nowait(event)
        client.inflight += 1

    async def _event_worker(self, client: Client, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for event in events:
            try:
                if wants_ack(event):
                    await self._handle_app_event(client, event, send_with_ack)
                elif event.event in BUILTINS:
                    self._handle_builtin(client, event)
                else:
                    await self._handle_app_event(client, event)
            except Exception:
                self.failed(client, f"event {event.event!r}")
                return
            finally:
                client.inflight -= 1

    def _handle_builtin(self, client: Client, event: Event) -> None:
        if self._replayed(client, event):
            return
        try:
            result = BUILTINS[event.event](self.node, client, event.data)
        except RoomdError as exc:
            self._fail(client, event, exc)
            return
        self._succeed(client, event, result)

    async def _handle_app_event(
        self, client: Client, event: Event, builtin: AsyncBuiltin | None = None
    ) -> None:
        if self._replayed(client, event):
            return
        handler = self.handlers.get(event.event)
        try:
            if builtin is not None:
                result = await builtin(self.node, client, event.data)
            elif handler is None:
                raise RemoteProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event {event.event!r}")
            else:
                result = await handler(Context(self.node, client), event.data)
        except RoomdError as exc:
            self._fail(client, event, exc)
            return
        except Exception:
            log.exception("handler for %r failed", event.event)
            self._fail(client, event, RoomdError(ErrorCode.INTERNAL, "internal error"))
            return
        self._succeed(client, event, result)

    def _replayed(self, client: Client, event: Event) -> bool:
        """Answer a repeated client message id with the original result."""
        if event.cmid is None:
            return False
        seen, result = client.session.seen(event.cmid)
        if seen and event.id is not None:
            client.send(Ack(event.id, result))
        return seen

    def _succeed(self, client: Client, event: Event, result: Any) -> None:
        if event.cmid is not None:
            client.session.remember(event.cmid, result)
        if event.id is not None:
            try:
                client.send(Ack(event.id, result))
            except TypeError:
                log.error("handler for %r returned a result with no JSON form", event.event)
                self._answer_error(client, event, ErrorCode.INTERNAL, "internal error")

    def _fail(self, client: Client, event: Event, exc: RoomdError) -> None:
        self.node.stats.errors[exc.code] += 1
        self._answer_error(client, event, exc.code, exc.message)

    def _answer_error(self, client: Client, event: Event, code: str, message: str) -> None:
        if event.id is not None:
            client.send(Ack(event.id, error=ErrorInfo(code, message)))
        else:
            client.send(Error(code, message))

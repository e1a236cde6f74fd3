"""The Trio client: one logical session with a roomd node over trio-websocket, kept alive.

A :class:`Client` connects, says ``hello``, and from the ``welcome`` on serves the connection: a
reader task dispatches acks, pushes, server requests and pongs; a heartbeat task pings. When the
connection ends it decides (:func:`._backoff.decide`) whether to reconnect, waits out a jittered
delay and connects again: rooms are re-joined, then the offline queue is flushed, and only then is
the client ``OPEN`` again for new emits (so the order of emits is kept). Every event it sends waits
for its turn under the rate limit the node announced in its welcome (:class:`._core.Pacer`).
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import random as _random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
)

from .._version import __version__
from ..protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Ack,
    AckError,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    Push,
    RemoteProtocolError,
    Request,
    RequestTimeout,
    ResumeRequest,
    RoomdError,
    StreamPosition,
    Welcome,
)
from ..protocol import Reconnect as ReconnectFrame
from ._backoff import Backoff, RandomSource, Reconnect, decide
from ._connection import (
    CallWaiter,
    Connection,
    EmitWaiter,
    RequestHandler,
    SendFailed,
    closed_by_peer,
    decode,
    on_request,
    rejected,
)
from ._core import (
    ANY_PUSH,
    Closed,
    CmidSource,
    EmitFailed,
    GaveUp,
    Lifecycle,
    OfflineQueue,
    Opened,
    Outgoing,
    PendingCalls,
    ProtocolProblem,
    Reconnecting,
    RoomKey,
    RoomSet,
    Rtt,
    RttSample,
    ack_result,
    client_url,
)
from ._errors import ClientClosed, ConnectFailed, ConnectionLost
from ._subscription import (
    DEFAULT_SUBSCRIPTION_SIZE,
    Handler,
    Overflow,
    Subscription,
    Subscriptions,
    run_handler,
)
from ._target import Target
from ._util import collapse_single
from ._websocket import open_websocket

log = logging.getLogger("roomd.client")

DEFAULT_OFFLINE_QUEUE: Final = 256
DEFAULT_CALL_TIMEOUT: Final = 10.0
DEFAULT_HEARTBEAT_INTERVAL: Final = 15.0
DEFAULT_HEARTBEAT_TIMEOUT: Final = 10.0
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_CLOSE_TIMEOUT: Final = 2.0
WS_MESSAGE_QUEUE: Final = 32  # trio-websocket's buffer between its reader and ours
# Error codes of a re-join that say "not now" rather than "never": the connection is dropped and
# the client reconnects with backoff (other error codes drop the room, see Opened.rejoin_failed).
TRANSIENT_REJOIN_ERRORS: Final = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.BUSY, ErrorCode.TIMEOUT}
)

TokenSource = str | Callable[[], str | Awaitable[str]]


class ClientState(enum.Enum):
    CONNECTING = "connecting"  # connecting, handshaking, re-joining or flushing
    OPEN = "open"
    RECONNECTING = "reconnecting"  # waiting out a backoff delay
    CLOSED = "closed"


class Client:
    """A roomd client session that survives disconnects.

    Create it, register handlers if you like, then run it: ``await nursery.start(client.run)``
    (or use :func:`open_client`). ``start`` returns once the first connection is open (or at
    once with ``wait=False``).

    Resource handling: :meth:`run` owns the connection, the reader, heartbeat and handler tasks;
    :meth:`aclose` closes the connection with 1000 and makes :meth:`run` return. Every queue is
    bounded: the offline queue (``offline_queue``), each subscription (``size``), trio-websocket's
    message buffer.

    Error handling: calls raise :class:`~roomd.protocol.AckError` (the node refused),
    :class:`~roomd.protocol.RequestTimeout` (no ack in time), :class:`ConnectionLost` (sent, but
    the connection dropped first); emits and calls raise :class:`OfflineQueueFull` when they
    cannot be queued and :class:`ClientClosed` once the client is closed. :meth:`run` raises
    :class:`ConnectFailed` if the first connection cannot be made and the client was told to wait
    for it. An exception in an ``on`` handler propagates out of :meth:`run`.
    """

    def __init__(
        self,
        url: str,
        *,
        urls: Sequence[str] = (),
        token: TokenSource | None = None,
        user: str | None = None,
        params: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        offline_queue: int = DEFAULT_OFFLINE_QUEUE,
        binary: bool = False,
        wait: bool = True,
        resume: bool = True,
        random: RandomSource | None = None,
        client_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        compress: bool = True,
    ) -> None:
        if heartbeat_interval <= 0 or heartbeat_timeout <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        self.url = url
        self.ws_url = client_url(url, user=user, params=params)
        self._user_param, self._params, self._ssl = user, params, ssl_context
        self._urls = [url, *(u for u in urls if u != url)]  # tried in turn when one fails
        self._target = Target.from_url(self.ws_url, ssl_context)
        self._move_to: str | None = None  # a node's reconnect frame: resume there at once
        self.backoff = backoff if backoff is not None else Backoff()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.close_timeout = close_timeout
        self.binary = binary
        self.compress = compress  # offer permessage-deflate
        self.wait = wait
        self.resume = resume
        self.client_name = client_name or f"roomd-client/{__version__}"
        self._token = token
        self._random: RandomSource = random if random is not None else _random.Random().random
        self._cmid = CmidSource()
        self._offline: OfflineQueue[CallWaiter] = OfflineQueue(offline_queue)
        self._pending: PendingCalls[CallWaiter] = PendingCalls()
        self._rooms = RoomSet()
        self._events = Subscriptions()
        self._request_handlers: dict[str, RequestHandler] = {}
        self._handlers: list[tuple[Subscription, Handler]] = []
        self._nursery: trio.Nursery | None = None
        self._handler_tasks = 0
        self._handlers_idle = trio.Event()
        self._state = ClientState.CONNECTING
        self._current: Connection | None = None  # the connection, from the WebSocket handshake
        self._open: Connection | None = None  # the same, once OPEN
        self._attempt_scope: trio.CancelScope | None = None
        self._closing = False
        self._ran = False
        self._started = False
        self._opened_once = False
        self._done = trio.Event()
        self._last_welcome: Welcome | None = None
        self._last_seq = 0
        self._inbox: StreamPosition | None = None  # the position in the user's inbox stream
        self._unacked: list[CallWaiter] = []  # calls sent, not acknowledged, connection lost
        self.rtt = Rtt()
        self.reconnects = 0  # connections opened after the first one
        self.close_code: int | None = None  # of the last connection
        self.close_reason = ""

    # State --------------------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is ClientState.OPEN

    @property
    def welcome(self) -> Welcome | None:
        """The last ``welcome`` (kept while disconnected)."""
        return self._last_welcome

    @property
    def resumed(self) -> bool:
        """Whether the node continued the previous session on the last (re)connect."""
        return self._last_welcome is not None and self._last_welcome.resumed

    @property
    def session(self) -> str | None:
        return self._last_welcome.session if self._last_welcome else None

    @property
    def user(self) -> str | None:
        return self._last_welcome.user if self._last_welcome else None

    @property
    def node(self) -> str | None:
        return self._last_welcome.node if self._last_welcome else None

    @property
    def rooms(self) -> list[RoomKey]:
        """The rooms joined (and re-joined after each reconnect), as ``(ns, room)``."""
        return list(self._rooms)

    @property
    def queued(self) -> int:
        """Frames waiting in the offline queue."""
        return len(self._offline)

    @property
    def last_seq(self) -> int:
        """The sequence number of the last reliable push received."""
        return self._last_seq

    # Events -------------------------------------------------------------------------------------

    def subscribe(
        self,
        event: str,
        *,
        size: int = DEFAULT_SUBSCRIPTION_SIZE,
        overflow: Overflow = "drop_oldest",
    ) -> Subscription:
        """A bounded stream of the pushes named ``event`` (``"*"``: every push) or of a
        lifecycle event (:class:`Lifecycle`). Pushes are :class:`~roomd.protocol.Push` frames."""
        return self._events.subscribe(event, size, overflow)

    def on(
        self,
        event: str,
        handler: Handler,
        *,
        size: int = DEFAULT_SUBSCRIPTION_SIZE,
        overflow: Overflow = "drop_oldest",
    ) -> Subscription:
        """Call ``handler(item)`` (sync or async) for each ``event``, in order, in a task of the
        client. ``close()`` the returned subscription to unregister."""
        sub = self.subscribe(event, size=size, overflow=overflow)
        if self._nursery is not None:
            self._start_handler(sub, handler)
        else:
            self._handlers.append((sub, handler))
        return sub

    def on_request(self, event: str, handler: RequestHandler) -> None:
        """Answer the node's ``request`` frames for ``event`` with ``handler(data)``.

        The handler's return value is the ack's result; a :class:`~roomd.protocol.HandlerError`
        becomes an error ack with its code. It runs within the request's timeout.
        """
        self._request_handlers[event] = handler

    def _start_handler(self, sub: Subscription, handler: Handler) -> None:
        assert self._nursery is not None
        self._handler_tasks += 1
        self._handlers_idle = trio.Event()

        async def run() -> None:
            try:
                await run_handler(sub, handler)
            finally:
                self._handler_tasks -= 1
                if self._handler_tasks == 0:
                    self._handlers_idle.set()

        self._nursery.start_soon(run)

    # Sending ------------------------------------------------------------------------------------

    async def emit(self, event: str, data: Any = None) -> None:
        """Send ``event`` without waiting for an acknowledgement.

        While disconnected it waits in the offline queue and is sent, in order, on reconnect.
        Error handling: :class:`OfflineQueueFull`, :class:`ClientClosed`.
        """
        item: Outgoing[CallWaiter] = Outgoing(event, data, self._cmid())
        await self._submit(item)
        self._rooms.observe(event, data, None)

    async def call(self, event: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Send ``event`` and return the result of its acknowledgement.

        ``timeout`` (default ``call_timeout``) covers the whole wait, including time spent in the
        offline queue; a call that times out there is never sent.

        Error handling: :class:`~roomd.protocol.AckError` (with the node's ``code``),
        :class:`~roomd.protocol.RequestTimeout`, :class:`ConnectionLost`,
        :class:`OfflineQueueFull`, :class:`ClientClosed`.
        """
        limit = self.call_timeout if timeout is None else timeout
        waiter = CallWaiter()
        item = Outgoing(event, data, self._cmid(), waiter)
        try:
            with trio.move_on_after(limit):
                await self._submit(item)
                await waiter.event.wait()
        finally:
            if not waiter.event.is_set():  # timed out or cancelled: forget it everywhere
                waiter.abandoned = True
                self._offline.remove(item.cmid)
                if waiter.call_id is not None:
                    self._pending.discard(waiter.call_id)
        if not waiter.event.is_set():
            raise RequestTimeout(ErrorCode.TIMEOUT, f"no ack for {event!r} within {limit:g} s")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.ack is not None
        result = ack_result(waiter.ack)
        self._rooms.observe(event, data, result)
        return result

    async def _submit(self, item: Outgoing[CallWaiter]) -> None:
        if self._state is ClientState.CLOSED or self._closing:
            raise self._closed_error()
        conn = self._open
        while conn is not None:
            try:
                await self._send_item(conn, item)
                return
            except SendFailed:
                if self._is_closed():
                    raise self._closed_error() from None
            # While this waited for its turn, the connection may have been replaced: use the new
            # one if it is open already (the flush is over), else the offline queue.
            conn = self._open if self._open is not conn else None
        self._offline.put(item)

    async def _send_item(
        self, conn: Connection, item: Outgoing[CallWaiter], waiter: CallWaiter | None = None
    ) -> bool:
        """Send ``item`` on ``conn`` in its turn under the node's rate limit, its ack awaited by
        ``waiter`` (default: the item's own). ``False`` when its caller gave up meanwhile: not
        sent."""
        waiter = waiter if waiter is not None else item.waiter
        await conn.pace()
        if waiter is not None and waiter.abandoned:
            return False
        call_id: int | None = None
        if waiter is not None:
            call_id = waiter.call_id = self._pending.open(waiter)
            waiter.item = item
        try:
            await conn.send(item.frame(call_id), paced=True)
        except BaseException:
            if waiter is not None and call_id is not None:
                self._pending.discard(call_id)
                waiter.call_id = None
            raise
        return True

    def _emit_failed(self, item: Outgoing[CallWaiter], error: Exception) -> None:
        """Report a queued emit that will not be handled (its caller returned long ago)."""
        code = error.code if isinstance(error, RoomdError) else type(error).__name__
        message = error.message if isinstance(error, RoomdError) else str(error)
        log.warning(
            "%s: queued %r (%s) not handled: %s: %s", self.url, item.event, item.cmid, code, message
        )
        failed = EmitFailed(item.event, item.data, item.cmid, code, message)
        self._events.publish(Lifecycle.EMIT_FAILED, failed)

    def _is_closed(self) -> bool:
        """Closed or closing (a method: mypy must not narrow it across awaits)."""
        return self._closing or self._state is ClientState.CLOSED

    def _closed_error(self) -> ClientClosed:
        return ClientClosed(
            f"client closed ({self.close_code} {self.close_reason})".strip(),
            self.close_code,
            self.close_reason,
        )

    # Built-in events ----------------------------------------------------------------------------

    async def join(self, room: str, ns: str = "/") -> Any:
        """Join a room (re-joined automatically after reconnects); the node's answer."""
        return await self.call("room.join", {"room": room, "ns": ns})

    async def leave(self, room: str, ns: str = "/") -> Any:
        return await self.call("room.leave", {"room": room, "ns": ns})

    async def members(self, room: str, ns: str = "/") -> list[dict[str, Any]]:
        result = await self.call("room.members", {"room": room, "ns": ns})
        members: list[dict[str, Any]] = result["members"]
        return members

    async def online_users(self) -> list[str]:
        users: list[str] = (await self.call("users.online", {}))["users"]
        return users

    async def send_text(
        self, text: str, *, room: str | None = None, user: str | None = None, ns: str = "/"
    ) -> Any:
        """Send a text chat message to a room or a user; the node's answer (``messageId``)."""
        if (room is None) == (user is None):
            raise ValueError("give exactly one of room, user")
        to: dict[str, Any] = {"room": room, "ns": ns} if room is not None else {"user": user}
        data = {"type": "text", "payload": {"content": text}}
        return await self.call("send", {"to": to, "data": data})

    async def typing(self, room: str, typing: bool = True, ns: str = "/") -> None:
        await self.emit("typing", {"room": room, "ns": ns, "typing": typing})

    async def set_status(self, status: str, text: str | None = None) -> Any:
        return await self.call("status", {"status": status, "text": text})

    # Running ------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and stay connected until :meth:`aclose`, a terminal close code or giving up."""
        if self._ran:
            raise RuntimeError("a Client runs only once")
        self._ran = True
        failure: ConnectFailed | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for sub, handler in self._handlers:
                    self._start_handler(sub, handler)
                self._handlers.clear()
                if not self.wait:
                    self._started = True
                    task_status.started()
                failure = await self._supervise(task_status)
                self._finish()
                if self._handler_tasks:  # let handlers see the last events, within bounds
                    with trio.move_on_after(self.close_timeout):
                        await self._handlers_idle.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._finish()
            self._nursery = None
            self._done.set()
        if failure is not None:
            raise failure

    async def aclose(self) -> None:
        """Close the connection (code 1000) and stop reconnecting; wait for :meth:`run` to end."""
        self._closing = True
        if self._attempt_scope is not None and self._current is None:
            self._attempt_scope.cancel()  # connecting, or waiting to reconnect
        conn = self._current
        if conn is not None:
            with trio.move_on_after(self.close_timeout) as scope:
                try:
                    await conn.ws.aclose(CloseCode.NORMAL, "closed by client")
                finally:
                    conn.close_done.set()
            if scope.cancelled_caught:
                conn.kill(Closed(CloseCode.NORMAL, "closed by client", False, local=True))
        if self._ran:
            await self._done.wait()
        else:
            self._finish()

    def _finish(self) -> None:
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        self._open = None
        error = self._closed_error()
        for waiter in self._pending.fail_all():
            waiter.fail(error)
        for item in self._offline.clear():
            if item.waiter is not None:
                item.waiter.fail(error)
            else:
                self._emit_failed(item, error)
        self._events.close()

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> ConnectFailed | None:
        """Connect, serve, and reconnect per the backoff; a failure to report if never started."""
        attempt = 0
        while True:
            self._state = ClientState.CONNECTING
            result = (False, Closed(CloseCode.NORMAL, "closed by client", False, True))
            with trio.CancelScope() as self._attempt_scope:
                result = await self._connect_once(task_status)
            self._attempt_scope = None
            opened, closed = result
            self._current = self._open = None
            lost = ConnectionLost(f"connection closed ({closed.code} {closed.reason})")
            for waiter in self._pending.fail_all():
                if self.resume and waiter.item is not None and not self._closing:
                    self._unacked.append(waiter)  # sent again if the session resumes
                else:
                    waiter.fail(lost)
            if opened:
                attempt = 0
            self.close_code, self.close_reason = closed.code, closed.reason
            if self._closing:
                self._events.publish(Lifecycle.CLOSE, Closed(closed.code, closed.reason, False))
                return None
            decision = decide(closed.code, attempt + 1, self.backoff, self._random)
            reconnect = isinstance(decision, Reconnect)
            verdict = Closed(closed.code, closed.reason, reconnect, closed.local)
            log.info("%s: connection closed: %s", self.url, verdict)
            self._events.publish(Lifecycle.CLOSE, verdict)
            if not isinstance(decision, Reconnect):
                if decision.gave_up:
                    gave_up = GaveUp(attempt, closed.code, closed.reason)
                    self._events.publish(Lifecycle.GAVE_UP, gave_up)
                if self._started:
                    return None
                return ConnectFailed(
                    f"cannot connect to {self.url}: {decision.reason}: "
                    f"{closed.code} {closed.reason}",
                    closed.code,
                    closed.reason,
                )
            attempt = decision.attempt
            delay = decision.delay
            if self._move_to is not None:  # the node named where to resume: go now
                self._switch(self._move_to)
                self._move_to, attempt, delay = None, 0, 0.0
            elif not opened and len(self._urls) > 1:
                self._switch(self._urls[(self._urls.index(self.url) + 1) % len(self._urls)])
            self._state = ClientState.RECONNECTING
            self._events.publish(Lifecycle.RECONNECTING, Reconnecting(attempt, delay))
            with trio.CancelScope() as self._attempt_scope:
                await trio.sleep(delay)
            self._attempt_scope = None
            if self._is_closed():
                return None

    async def _headers(self) -> list[tuple[bytes, bytes]]:
        token = self._token
        if callable(token):
            value = token()
            token = await value if inspect.isawaitable(value) else value
        if not token:
            return []
        return [(b"Authorization", f"Bearer {token}".encode())]

    async def _connect_once(self, task_status: trio.TaskStatus[None]) -> tuple[bool, Closed]:
        """One connection, from TCP connect to close: (whether it opened, why it closed).

        Resource handling: the client owns the TCP stream (trio-websocket only wraps it) and
        closes it as soon as the WebSocket is closed, without waiting for the node's EOF.
        """
        target = self._target
        try:
            headers = await self._headers()
            with trio.fail_after(self.connect_timeout):
                stream = await target.connect()
        except (OSError, trio.TooSlowError) as exc:
            return False, Closed(CloseCode.ABNORMAL, f"cannot connect: {exc!r}", True, True)
        scope = trio.CancelScope()
        conn: Connection | None = None
        closed: Closed | None = None
        try:
            with scope, collapse_single():
                async with trio.open_nursery() as nursery:
                    with trio.fail_after(self.connect_timeout):
                        ws = await open_websocket(
                            nursery,
                            stream,
                            target.host_header,
                            target.resource,
                            extra_headers=headers,
                            message_queue_size=WS_MESSAGE_QUEUE,
                            compress=self.compress,
                        )
                    conn = self._current = Connection(ws, self.binary, scope)
                    closed = await self._serve(conn, task_status)
                    if self._closing:  # aclose() sent our close frame: let the answer arrive
                        with trio.move_on_after(self.close_timeout):
                            await conn.close_done.wait()
                    nursery.cancel_scope.cancel()  # trio-websocket's reader: nothing left to read
        except ConnectionRejected as exc:
            return False, rejected(exc)
        except trio.TooSlowError:
            return False, Closed(CloseCode.ABNORMAL, "no WebSocket upgrade in time", True, True)
        finally:
            await trio.aclose_forcefully(stream)
        opened = conn is not None and conn.opened
        if conn is not None and conn.verdict is not None:
            return opened, conn.verdict
        if closed is None:  # cancelled: aclose() while connecting
            return opened, Closed(CloseCode.NORMAL, "closed by client", False, True)
        return opened, closed

    async def _serve(self, conn: Connection, task_status: trio.TaskStatus[None]) -> Closed:
        async with trio.open_nursery() as nursery:
            closed = await self._handshake(conn)
            if closed is not None:
                return closed
            nursery.start_soon(self._heartbeat, conn)
            nursery.start_soon(self._after_open, conn, task_status)
            closed = await self._read(conn, nursery)
            nursery.cancel_scope.cancel()
        return closed

    async def _handshake(self, conn: Connection) -> Closed | None:
        """Send hello and wait for the welcome; a reason to close, or ``None`` when welcomed."""
        resume = None
        last = self._last_welcome
        if self.resume and last is not None:
            resume = ResumeRequest(
                last.session,
                last.resume_token,
                self._last_seq,
                rooms=self._rooms.positions() or None,
                inbox=self._inbox,
            )
        with trio.move_on_after(self.connect_timeout):
            try:
                await conn.send(Hello(PROTOCOL_VERSION, resume, self.client_name))
                while True:
                    raw = await conn.ws.get_message()
                    frame = decode(raw)
                    if isinstance(frame, Welcome):
                        break
                    if isinstance(frame, Error | RemoteProtocolError):
                        self._publish_problem(frame)
            except ConnectionClosed as exc:
                return closed_by_peer(exc)
            except SendFailed:
                return closed_by_peer(None)
            if frame.v not in SUPPORTED_VERSIONS:
                code = CloseCode.UNSUPPORTED_VERSION
                await conn.ws.aclose(code, "unsupported protocol version")
                return Closed(code, f"node speaks protocol version {frame.v}", False, True)
            conn.welcomed(frame)
            self._last_welcome = frame
            if not frame.resumed:
                self._last_seq = frame.seq
                self._inbox = frame.inbox
            return None
        return Closed(CloseCode.HANDSHAKE_TIMEOUT, "no welcome in time", True, True)

    async def _after_open(self, conn: Connection, task_status: trio.TaskStatus[None]) -> None:
        """Re-join rooms, flush the offline queue, then declare the client open.

        Error handling: a re-join that gets no ack in time, or a "not now" error
        (:data:`TRANSIENT_REJOIN_ERRORS`), drops the connection (the client reconnects with
        backoff); any other error ack drops that room (``Opened.rejoin_failed``) and goes on.
        A queued emit is sent with an id, so that a refusal is reported (``EMIT_FAILED``).
        """
        welcome = conn.welcome
        assert welcome is not None
        rejoined: list[RoomKey] = []
        failed: list[RoomKey] = []
        unacked, self._unacked = self._unacked, []
        resent = 0
        try:
            if welcome.resumed:  # the node kept the rooms; what was not acknowledged goes again
                for waiter in unacked:
                    if not waiter.abandoned and not waiter.event.is_set():
                        resent += await self._send_item(conn, waiter.item, waiter)
            else:
                lost = ConnectionLost("the connection dropped and the session was not resumed")
                for waiter in unacked:
                    waiter.fail(lost)
                for key in self._rooms:
                    joined = await self._rejoin(conn, key)
                    if joined is None:
                        return  # dropped: the reader sees the connection end
                    (rejoined if joined else failed).append(key)
            flushed = 0
            while (item := self._offline.popleft()) is not None:
                waiter = item.waiter or EmitWaiter(functools.partial(self._emit_failed, item))
                try:
                    sent = await self._send_item(conn, item, waiter)
                except BaseException:
                    self._offline.put_front(item)
                    raise
                flushed += sent
        except SendFailed:
            return  # the connection is going; the reader will see it end
        # No checkpoint from the empty queue to OPEN: new emits go after the flushed ones.
        conn.opened = True
        self._state = ClientState.OPEN
        self._open = conn
        reconnect = self._opened_once
        self._opened_once = True
        if reconnect:
            self.reconnects += 1
        opened = Opened(
            welcome.session,
            welcome.node,
            welcome.user,
            welcome.resumed,
            reconnect,
            tuple(rejoined),
            tuple(failed),
            flushed,
            welcome.replayed,
            resent,
            welcome.reason,
            tuple((g.ns, g.room) for g in welcome.gaps or ()),
            welcome.inbox_gap,
        )
        self._events.publish(Lifecycle.OPEN, opened)
        if not self._started:
            self._started = True
            task_status.started()

    async def _rejoin(self, conn: Connection, key: RoomKey) -> bool | None:
        """Re-join one room on ``conn``: whether it was re-joined (``False``: the node refused it
        and it is forgotten), or ``None`` when the connection was dropped for it."""
        room = f"{key[1]!r}" + ("" if key[0] == "/" else f" (namespace {key[0]!r})")
        try:
            await self._call_on(conn, "room.join", {"ns": key[0], "room": key[1]})
        except AckError as exc:
            if exc.code in TRANSIENT_REJOIN_ERRORS:
                reason = f"re-join of {room} refused for now: {exc.code}"
                self._drop(conn, Closed(CloseCode.TRY_AGAIN_LATER, reason, True, local=True))
                return None
            log.warning("%s: cannot re-join %s: %s", self.url, room, exc)
            self._rooms.discard(key)
            return False
        except RequestTimeout:
            reason = f"no answer to the re-join of {room} within {self.call_timeout:g} s"
            self._drop(conn, Closed(CloseCode.HANDSHAKE_TIMEOUT, reason, True, local=True))
            return None
        return True

    def _drop(self, conn: Connection, verdict: Closed) -> None:
        log.warning("%s: %s: dropping the connection", self.url, verdict.reason)
        conn.kill(verdict)

    async def _call_on(self, conn: Connection, event: str, data: Any) -> Any:
        """A call on ``conn`` now, bypassing the offline queue (used while re-joining)."""
        waiter = CallWaiter()
        item = Outgoing(event, data, self._cmid(), waiter)
        try:
            with trio.move_on_after(self.call_timeout):
                await self._send_item(conn, item)
                await waiter.event.wait()
        finally:
            if waiter.call_id is not None and not waiter.event.is_set():
                self._pending.discard(waiter.call_id)
        if not waiter.event.is_set():
            raise RequestTimeout(ErrorCode.TIMEOUT, f"no ack for {event!r}")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.ack is not None
        return ack_result(waiter.ack)

    async def _read(self, conn: Connection, nursery: trio.Nursery) -> Closed:
        while True:
            try:
                raw = await conn.ws.get_message()
            except ConnectionClosed as exc:
                return closed_by_peer(exc)
            frame = decode(raw)
            if isinstance(frame, Ack):
                waiter = self._pending.resolve(frame.id)
                if waiter is not None:
                    waiter.resolve(frame)
            elif isinstance(frame, Push):
                if frame.seq is not None:
                    self._last_seq = frame.seq
                if frame.epoch is not None and frame.offset is not None:
                    if frame.room is not None:
                        self._rooms.saw((frame.room.ns, frame.room.room), frame.epoch, frame.offset)
                    else:
                        self._inbox = StreamPosition(frame.epoch, frame.offset)
                self._events.publish(frame.event, frame)
                self._events.publish(ANY_PUSH, frame)
            elif isinstance(frame, Pong):
                self._on_pong(conn, frame)
            elif isinstance(frame, Request):
                await on_request(conn, frame, self._request_handlers, nursery)
            elif isinstance(frame, Error):
                waiter = self._pending.resolve(frame.ref) if frame.ref is not None else None
                if waiter is not None:
                    waiter.fail(AckError(frame.code, frame.message))
                else:
                    self._publish_problem(frame)
            elif isinstance(frame, RemoteProtocolError):
                self._publish_problem(frame)
            elif isinstance(frame, ReconnectFrame):
                self._move_to = frame.url
                for alternate in frame.alternates or ():
                    if alternate not in self._urls:
                        self._urls.append(alternate)
                reason = f"{frame.node} asks to resume at {frame.url} ({frame.reason})"
                self._drop(conn, Closed(CloseCode.GOING_AWAY, reason, True, local=True))

    def _switch(self, url: str) -> None:
        """Connect to ``url`` from now on (its query gets the same user and parameters)."""
        log.info("%s: moving to %s", self.url, url)
        self.url = url
        self.ws_url = client_url(url, user=self._user_param, params=self._params)
        self._target = Target.from_url(self.ws_url, self._ssl)
        if url not in self._urls:
            self._urls.append(url)

    def _publish_problem(self, frame: Error | RemoteProtocolError) -> None:
        log.warning("%s: %s: %s", self.url, frame.code, frame.message)
        self._events.publish(Lifecycle.ERROR, ProtocolProblem(frame.code, frame.message))

    def _on_pong(self, conn: Connection, pong: Pong) -> None:
        if conn.ping_ts is None or pong.ts != conn.ping_ts:
            return
        conn.ping_ts = None
        self.rtt.update(trio.current_time() - pong.ts)
        assert self.rtt.latest is not None and self.rtt.smoothed is not None
        self._events.publish(Lifecycle.RTT, RttSample(self.rtt.latest, self.rtt.smoothed))
        conn.pong.set()

    async def _heartbeat(self, conn: Connection) -> None:
        """Ping every interval; no pong within the timeout means the connection is dead."""
        interval = self.heartbeat_interval
        welcome = conn.welcome
        if welcome is not None:  # stay well inside the node's own silence limit
            interval = min(interval, welcome.heartbeat.timeout / 2)
        while True:
            await trio.sleep(interval)
            conn.pong = trio.Event()
            conn.ping_ts = ts = trio.current_time()
            with trio.move_on_after(self.heartbeat_timeout):
                try:
                    await conn.send(Ping(ts))
                except SendFailed:
                    return
                await conn.pong.wait()
                continue
            reason = f"no pong within {self.heartbeat_timeout:g} s"
            self._drop(conn, Closed(CloseCode.HEARTBEAT_TIMEOUT, reason, True, local=True))
            return


@asynccontextmanager
async def open_client(
    url: str,
    *,
    token: TokenSource | None = None,
    user: str | None = None,
    params: Mapping[str, str] | None = None,
    **options: Any,
) -> AsyncIterator[Client]:
    """Connect to a roomd node; the client stays connected (reconnecting) until the block ends.

    ``user`` (development mode) and ``params`` go into the URL's query; ``token`` goes into an
    ``Authorization: Bearer`` header (a callable is called again for each reconnect). Other
    options are those of :class:`Client`.

    Error handling: :class:`ConnectFailed` if the first connection fails for good (terminal close
    code, or ``backoff.attempts`` exhausted); exceptions from the block propagate unwrapped.
    """
    client = Client(url, token=token, user=user, params=params, **options)
    with collapse_single():
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()

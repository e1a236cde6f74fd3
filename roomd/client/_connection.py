"""One WebSocket connection of a client, and answering the node's requests on it.

The :class:`~._client.Client` owns a series of connections; each is a :class:`Connection`: the
trio-websocket connection, the handshake's welcome, the pacer that keeps to the node's rate limit,
the heartbeat's last ping, and the client's own verdict when it drops the connection (a missed
pong ...).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from ..protocol import (
    Ack,
    AckError,
    CloseCode,
    ErrorCode,
    ErrorInfo,
    RemoteProtocolError,
    Request,
    RoomdError,
    Welcome,
    close_info,
    decode_server_frame,
    encode_frame,
)
from ._core import Closed, Pacer

log = logging.getLogger("roomd.client")

MAX_CONCURRENT_REQUESTS: Final = 32  # node requests answered at once; more are refused (busy)

RequestHandler = Callable[[Any], Any]  # sync or async; its return value is the ack's result

_SEND_ERRORS: Final = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class CallWaiter:
    """Where the ack of one call arrives. ``abandoned`` is set when its caller stopped waiting
    (timeout, cancellation): a call still queued is then never sent."""

    __slots__ = ("abandoned", "ack", "call_id", "error", "event", "item")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ack: Ack | None = None
        self.error: Exception | None = None
        self.call_id: int | None = None
        self.abandoned = False
        self.item: Any = None  # the event it waits for the ack of, once sent (to resend it)

    def resolve(self, ack: Ack) -> None:
        if not self.event.is_set():
            self.ack = ack
            self.event.set()

    def fail(self, error: Exception) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class EmitWaiter(CallWaiter):
    """The ack of an emit sent from the offline queue. Its caller returned long ago, so no one
    awaits it: a failure (error ack, connection lost, client closed) goes to ``on_failure``."""

    __slots__ = ("on_failure",)

    def __init__(self, on_failure: Callable[[Exception], None]) -> None:
        super().__init__()
        self.on_failure = on_failure

    def resolve(self, ack: Ack) -> None:
        if ack.error is not None:
            self.fail(AckError(ack.error.code, ack.error.message))
        else:
            super().resolve(ack)

    def fail(self, error: Exception) -> None:
        if not self.event.is_set():
            super().fail(error)
            self.on_failure(error)


class SendFailed(Exception):
    """The connection went away under a send."""


class Connection:
    """One WebSocket connection of the client (a client has a series of them)."""

    def __init__(self, ws: WebSocketConnection, binary: bool, scope: trio.CancelScope) -> None:
        self.ws = ws
        self.binary = binary
        self.scope = scope
        self.welcome: Welcome | None = None
        self.pacer: Pacer | None = None  # from the welcome's limits
        self.opened = False  # the client became OPEN on this connection
        self.verdict: Closed | None = None  # the client's own reason to drop it
        self.ping_ts: float | None = None
        self.pong = trio.Event()
        self.requests = 0  # server requests being answered
        self.close_done = trio.Event()  # set when a close handshake we started is over

    def welcomed(self, welcome: Welcome) -> None:
        """The handshake is done: pace from now on (the hello already counted on the node)."""
        self.welcome = welcome
        self.pacer = Pacer.from_limits(welcome.limits, trio.current_time(), spent=1)

    async def pace(self) -> None:
        """Wait for this connection's turn to send one frame within the node's rate limit.

        The frame must then be sent with ``send(frame, paced=True)``.
        """
        if self.pacer is not None:
            delay = self.pacer.reserve(trio.current_time())
            if delay > 0:
                await trio.sleep(delay)

    async def send(self, frame: Any, *, paced: bool = False) -> None:
        """Send ``frame`` now; unless it waited in :meth:`pace`, it still counts in the pacer."""
        if not paced and self.pacer is not None:
            self.pacer.reserve(trio.current_time())
        data = encode_frame(frame, self.binary)
        try:
            await self.ws.send_message(data if self.binary else data.decode())
        except _SEND_ERRORS:
            raise SendFailed from None

    def kill(self, verdict: Closed) -> None:
        """Drop the connection now (no close handshake) for ``verdict``."""
        if self.verdict is None:
            self.verdict = verdict
        self.scope.cancel()


async def on_request(
    conn: Connection,
    request: Request,
    handlers: Mapping[str, RequestHandler],
    nursery: trio.Nursery,
) -> None:
    """Answer ``request`` in a task of ``nursery`` (the connection's), or refuse it when
    :data:`MAX_CONCURRENT_REQUESTS` are being answered already."""
    if conn.requests >= MAX_CONCURRENT_REQUESTS:
        busy = ErrorInfo(ErrorCode.RATE_LIMITED, "client busy: too many requests at once")
        with contextlib.suppress(SendFailed):
            await conn.send(Ack(request.id, error=busy))
        return
    conn.requests += 1
    nursery.start_soon(_answer, conn, request, handlers.get(request.event))


async def _answer(conn: Connection, request: Request, handler: RequestHandler | None) -> None:
    try:
        ack = await _run_handler(request, handler)
        if ack is None:
            return
        try:
            await conn.send(ack)
        except TypeError:
            log.error("request handler for %r returned data with no JSON form", request.event)
            await conn.send(Ack(request.id, error=ErrorInfo(ErrorCode.INTERNAL, "internal")))
    except SendFailed:
        pass
    finally:
        conn.requests -= 1


async def _run_handler(request: Request, handler: RequestHandler | None) -> Ack | None:
    """The ack for ``request``, or ``None`` if the handler outlived the request's timeout."""
    if handler is None:
        message = f"no handler for request {request.event!r}"
        return Ack(request.id, error=ErrorInfo(ErrorCode.UNKNOWN_EVENT, message))
    try:
        with trio.fail_after(request.timeout):
            result = handler(request.data)
            if inspect.isawaitable(result):
                result = await result
    except trio.TooSlowError:
        return None  # the node stopped waiting
    except RoomdError as exc:
        return Ack(request.id, error=ErrorInfo(exc.code, exc.message))
    except Exception:
        log.exception("request handler for %r failed", request.event)
        return Ack(request.id, error=ErrorInfo(ErrorCode.INTERNAL, "internal error"))
    return Ack(request.id, result)


def decode(raw: bytes | str) -> Any:
    """A server frame, or the :class:`RemoteProtocolError` that decoding it raised."""
    try:
        return decode_server_frame(raw, isinstance(raw, bytes))
    except RemoteProtocolError as exc:
        return exc


def closed_by_peer(exc: ConnectionClosed | None) -> Closed:
    reason = exc.reason if exc is not None else None
    if reason is None:
        return Closed(CloseCode.ABNORMAL, "connection lost", True, local=True)
    code = reason.code
    text = reason.reason
    if not text:
        info = close_info(code)
        text = info.reason if info is not None else ""
    return Closed(code, text, True, local=code == CloseCode.ABNORMAL)


def rejected(exc: ConnectionRejected) -> Closed:
    """The HTTP answer to the upgrade, as a close code: 401/403 are terminal (auth failed)."""
    status = exc.status_code
    detail = ""
    try:
        body = orjson.loads(exc.body or b"{}")
        detail = str(body.get("error", "")) if isinstance(body, dict) else ""
    except orjson.JSONDecodeError:
        detail = (exc.body or b"")[:100].decode("utf-8", "replace")
    text = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return Closed(CloseCode.AUTH_FAILED, text, False, local=True)
    if status == 429 or status >= 500:
        return Closed(CloseCode.TRY_AGAIN_LATER, text, True, local=True)
    return Closed(CloseCode.BAD_HANDSHAKE, text, False, local=True)

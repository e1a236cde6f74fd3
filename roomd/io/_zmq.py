"""ZeroMQ sockets under Trio: the only module of roomd that touches pyzmq.

libzmq gives each socket one file descriptor (``zmq.FD``) that is *edge-triggered* and only means
"``zmq.EVENTS`` may have changed". Three rules follow, and :class:`ZmqSocket` keeps all of them:

1. Before sleeping on the fd, read ``EVENTS``: the message (or the room to send) may already be
   there, and reading ``EVENTS`` is what re-arms the edge.
2. Every ``send``/``recv`` on the socket may consume the edge a sleeping task is waiting for (they
   process libzmq's command mailbox too). So after each one, the task sleeping on the fd is woken
   (its wait scope is cancelled) and re-reads ``EVENTS``. Without this a receiver blocked while
   another task sends on the same socket can stall forever.
3. Trio allows one task per fd in ``wait_readable``; other tasks that need to wait park in a
   :class:`trio.lowlevel.ParkingLot` and re-check ``EVENTS`` whenever the sleeper wakes.

A socket processes libzmq's commands only when the application touches it, so keep a task in
``receive`` on every SUB/XPUB: that is what makes a SUB resend its subscriptions after a
reconnect. Bus messages are single frames (their topic is a prefix); multipart messages are
for the ZAP handler and socket monitors, whose protocols are multipart (both on ``inproc://``:
a request there wakes ``zmq.FD`` as a TCP message does, measured with libzmq 4.3.5).

CurveZMQ: a socket opened with a :class:`Keypair` encrypts every connection it makes. Bound, it
is the CURVE server: each client's public key is checked by the context's ZAP handler
(:func:`serve_zap`, a Trio task on an ``inproc://`` REP socket), which must run before the
socket binds (libzmq lets every client in while no handler is bound). Connected, it is the
client, and must be told the server's public key.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self, cast

import attrs
import trio
import zmq
from zmq import SocketType as SocketType
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

__all__ = [
    "DEFAULT_RCVHWM",
    "DEFAULT_SNDHWM",
    "KEEPALIVE_CNT",
    "KEEPALIVE_IDLE_S",
    "KEEPALIVE_INTVL_S",
    "RECONNECT_IVL_MAX_MS",
    "RECONNECT_IVL_MS",
    "ZAP_ENDPOINT",
    "Handshake",
    "Keypair",
    "Monitor",
    "SocketEvent",
    "SocketType",
    "ZapRequest",
    "ZmqSocket",
    "curve_keypair",
    "curve_public",
    "make_context",
    "open_monitor",
    "open_socket",
    "serve_zap",
    "set_keepalive",
]

log = logging.getLogger("roomd.zmq")

#: High-water marks, in messages, per peer pipe. 20,000 absorbs ~0.15 s of the measured peak rate
#: (~136k msg/s) and bounds a pipe to ~4 MB of 200-byte bus messages. At the mark a PUB/XPUB
#: drops silently (receivers must detect gaps by sequence number); DEALER/PUSH block the sender.
DEFAULT_SNDHWM: Final = 20_000
DEFAULT_RCVHWM: Final = 20_000

#: TCP keepalive, not ZMTP heartbeats, finds peers that vanished without a FIN (host down,
#: partition): probes after 2 s of silence, 1 s apart, the connection dropped after 3 unanswered
#: (about 5 s). The kernel answers them, so a peer that is slow to read is never taken for a dead
#: one. ZMTP heartbeats (``HEARTBEAT_IVL``) must stay off on every bus socket: a receiver that
#: stops reading at its receive high-water mark cannot answer PINGs, either end then drops the
#: connection, and libzmq 4.3.5 aborts the receiving process when it reads again (``Assertion
#: failed: _input_stopped`` or ``!_io_error``, libzmq issues 3937 and 4767; reproduced in
#: tests/test_zmq.py). A node busy under a burst was killed that way.
KEEPALIVE_IDLE_S: Final = 2
KEEPALIVE_INTVL_S: Final = 1
KEEPALIVE_CNT: Final = 3
#: A connecting socket retries after 100 ms, backing off exponentially up to 1 s.
RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1_000

_DEFAULT_BATCH: Final = 1024
#: Where libzmq sends its ZAP requests (RFC 27): one handler per context.
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
_ZAP_VERSION: Final = b"1.0"
# errnos that mean "this socket (or its context) is gone".
_CLOSED_ERRNOS: Final = frozenset({zmq.ENOTSOCK, zmq.ETERM, errno.EBADF})


def make_context(io_threads: int = 1) -> zmq.Context[zmq.Socket[bytes]]:
    """A new context whose sockets default to ``LINGER=0``.

    Resource handling:
        The caller owns the context. Use it as a context manager (``with make_context() as
        ctx:``), which calls ``ctx.destroy()`` on exit; close every :class:`ZmqSocket` first.
        With linger 0, unsent messages are dropped at close and termination never blocks.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads)
    ctx.setsockopt(zmq.LINGER, 0)
    return ctx


def set_keepalive(
    sock: zmq.Socket[bytes],
    *,
    idle_s: int = KEEPALIVE_IDLE_S,
    interval_s: int = KEEPALIVE_INTVL_S,
    count: int = KEEPALIVE_CNT,
    reconnect_ivl_ms: int = RECONNECT_IVL_MS,
    reconnect_ivl_max_ms: int = RECONNECT_IVL_MAX_MS,
) -> None:
    """Set the options that detect dead TCP peers (TCP keepalive; no ZMTP heartbeats: see
    :data:`KEEPALIVE_IDLE_S`) and pace reconnection.

    Must be called before ``bind``/``connect``: options apply to connections made afterwards.
    """
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, interval_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, count)
    sock.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_ivl_max_ms)


@attrs.frozen
class Keypair:
    """A CURVE keypair, both keys in Z85 (40 characters each)."""

    public: str
    secret: str = attrs.field(repr=False)


def curve_keypair() -> Keypair:
    """A new CURVE keypair (libzmq's ``zmq_curve_keypair``)."""
    public, secret = zmq.curve_keypair()
    return Keypair(public.decode("ascii"), secret.decode("ascii"))


def curve_public(secret: str) -> str:
    """The public key of a Z85 secret key.

    Error handling: :exc:`ValueError` if ``secret`` is not a Z85 key.
    """
    try:
        return zmq.curve_public(secret.encode("ascii")).decode("ascii")
    except (zmq.ZMQError, UnicodeEncodeError) as exc:
        raise ValueError(f"not a Z85 secret key: {exc}") from None


def open_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    kind: SocketType,
    *,
    sndhwm: int | None = None,
    rcvhwm: int = DEFAULT_RCVHWM,
    keepalive: bool = True,
    keys: Keypair | None = None,
    zap_domain: str = "",
) -> ZmqSocket:
    """Create a socket of type *kind* with roomd's options and wrap it in a :class:`ZmqSocket`.

    *sndhwm* defaults to :data:`DEFAULT_SNDHWM`, except for SUB and XSUB sockets: all they send
    is subscriptions, which libzmq drops *silently* at the send high-water mark (also when it
    resends every subscription after a reconnect), so theirs is unlimited (0).

    With *keys* every connection of the socket is CurveZMQ (see the module docstring);
    *zap_domain* is what the ZAP handler is told the requests of a bound socket are for.

    Resource handling:
        The caller owns the returned socket and must close it (``async with``/``aclose()``).
    """
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if sndhwm is None:
            sndhwm = 0 if kind in (SocketType.SUB, SocketType.XSUB) else DEFAULT_SNDHWM
        sock.setsockopt(zmq.SNDHWM, sndhwm)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if keepalive:
            set_keepalive(sock)
        if keys is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode("ascii"))
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode("ascii"))
        if zap_domain:
            sock.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())
        return ZmqSocket(sock, curve=keys is not None)
    except BaseException:
        sock.close(linger=0)
        raise


class ZmqSocket:
    """A Trio-friendly, single-frame view of one ``zmq.Socket``.

    Any number of tasks may send and receive concurrently; at most one of them sleeps on the
    socket's fd and the others park until it wakes (see the module docstring).

    Resource handling:
        The ``ZmqSocket`` owns the wrapped ``zmq.Socket`` from construction on: do not use the
        raw socket for I/O any more. :meth:`close`/:meth:`aclose` (or leaving ``async with``)
        first tells Trio the fd is closing, so a task blocked in :meth:`receive` or :meth:`send`
        gets :exc:`trio.ClosedResourceError`, then closes the socket with linger 0 (pending
        outgoing messages are dropped).

    Error handling:
        ``zmq.Again`` never escapes: it means "wait". Any call on a closed socket (closed here,
        by its context's termination, or behind our back) raises :exc:`trio.ClosedResourceError`.
        Other ``zmq.ZMQError`` propagate unchanged: they mean misuse (e.g. ``send`` on a SUB).
        Cancellation is clean: a cancelled ``send`` sent nothing, a cancelled ``receive`` took
        nothing off the socket.
    """

    def __init__(self, sock: zmq.Socket[bytes], *, curve: bool = False) -> None:
        self._sock = sock
        self._curve = curve  # it has a keypair: CurveZMQ on every connection
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        self._closed = False
        # The scope of the one task sleeping in wait_readable(fd), if any.
        self._sleeper: trio.CancelScope | None = None
        self._sleeper_wants = 0  # the EVENTS flag it waits for
        # Tasks that need to wait while another one is the sleeper.
        self._lot = trio.lowlevel.ParkingLot()

    # -- setup (synchronous; no waiting involved) -------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def curve(self) -> bool:
        """Whether its connections are CurveZMQ (it was opened with a keypair)."""
        return self._curve

    def bind(self, endpoint: str) -> str:
        """Bind to *endpoint* and return the endpoint actually bound (resolves port ``*``/0).

        A socket with a keypair is the CURVE server of the connections it accepts: the
        context's ZAP handler must be running (see :func:`serve_zap`).
        """
        self._check_open()
        with _map_zmq_errors:
            if self._curve:
                self._sock.setsockopt(zmq.CURVE_SERVER, 1)
            self._sock.bind(endpoint)
            bound = cast(bytes, self._sock.getsockopt(zmq.LAST_ENDPOINT))
        self._poke()
        return bound.decode()

    def connect(self, endpoint: str, server_key: str | None = None) -> None:
        """Connect to *endpoint*; libzmq connects (and reconnects) in the background.

        A socket with a keypair needs the *server_key* (Z85) of the socket at *endpoint*:
        options are read at each ``connect``, so one socket may connect to several servers,
        each with its own key.
        """
        self._check_open()
        if self._curve and server_key is None:
            raise ValueError(f"a CurveZMQ connection to {endpoint} needs the server's key")
        with _map_zmq_errors:
            if self._curve and server_key is not None:
                self._sock.setsockopt(zmq.CURVE_SERVER, 0)
                self._sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode("ascii"))
            self._sock.connect(endpoint)
        self._poke()

    def disconnect(self, endpoint: str) -> None:
        """Undo :meth:`connect` (its queued messages are dropped)."""
        self._check_open()
        with _map_zmq_errors:
            self._sock.disconnect(endpoint)
        self._poke()

    def start_monitor(self, endpoint: str, events: int) -> None:
        """Publish this socket's *events* (``zmq.EVENT_*``) on a PAIR bound at *endpoint*
        (``inproc://``); see :func:`open_monitor`."""
        self._check_open()
        with _map_zmq_errors:
            self._sock.monitor(endpoint, events)
        self._poke()

    def stop_monitor(self) -> None:
        """Undo :meth:`start_monitor`."""
        self._check_open()
        with _map_zmq_errors:
            self._sock.disable_monitor()
        self._poke()

    def subscribe(self, topic: bytes) -> None:
        """SUB only: receive messages starting with *topic* (``b""`` means all)."""
        self._check_open()
        with _map_zmq_errors:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._poke()

    def unsubscribe(self, topic: bytes) -> None:
        """SUB only: undo one :meth:`subscribe` of *topic* (subscriptions are counted)."""
        self._check_open()
        with _map_zmq_errors:
            self._sock.setsockopt(zmq.UNSUBSCRIBE, topic)
        self._poke()

    # -- sending ----------------------------------------------------------------------------

    def send_nowait(self, msg: bytes) -> bool:
        """Queue *msg* if the socket can take it now; return False if it would block.

        PUB and XPUB never block (they drop at the high-water mark), so this is the cheap way
        to publish many messages in a loop (it is not a checkpoint).
        """
        self._check_open()
        try:
            with _map_zmq_errors:
                self._sock.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            return False
        finally:
            self._poke()
        return True

    async def send(self, msg: bytes) -> None:
        """Send one single-frame message, waiting while the socket would block (HWM, no peer)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.send_nowait(msg):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        while True:
            await self._wait_for(zmq.POLLOUT)
            if self.send_nowait(msg):
                return

    # -- receiving --------------------------------------------------------------------------

    async def receive_batch(self, max_messages: int = _DEFAULT_BATCH) -> list[bytes]:
        """Wait for at least one message, then return every queued one, up to *max_messages*.

        The queue is drained without awaiting in between: one wake-up per batch instead of one
        per message is most of the throughput (136k vs 41k msg/s measured).
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        batch = self._drain(max_messages)
        if batch:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return batch
        while True:
            await self._wait_for(zmq.POLLIN)
            batch = self._drain(max_messages)
            if batch:  # else a concurrent receiver took it first
                return batch

    def receive_batch_nowait(self, max_messages: int = _DEFAULT_BATCH) -> list[bytes]:
        """Every message queued now, up to *max_messages*; none if none is (not a
        checkpoint)."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        return self._drain(max_messages)

    async def receive(self) -> bytes:
        """Wait for and return one message."""
        (msg,) = await self.receive_batch(1)
        return msg

    async def receive_multipart(self) -> list[bytes]:
        """Wait for and return one message of any number of frames (they arrive together)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        frames = self._take_multipart()
        if frames is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return frames
        while True:
            await self._wait_for(zmq.POLLIN)
            frames = self._take_multipart()
            if frames is not None:
                return frames

    def send_multipart_nowait(self, frames: list[bytes]) -> bool:
        """Queue a message of several frames if the socket can take it now (see
        :meth:`send_nowait`); all of them or none."""
        self._check_open()
        try:
            with _map_zmq_errors:
                self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        finally:
            self._poke()
        return True

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket now; idempotent. Waiting tasks get :exc:`trio.ClosedResourceError`."""
        if self._closed:
            return
        self._closed = True
        # Outside trio.run (RuntimeError) nobody can be waiting on the fd.
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(self._fd)
        self._lot.unpark_all()
        self._sock.close(linger=0)

    async def aclose(self) -> None:
        """Close the socket (see :meth:`close`); a checkpoint, but closes even if cancelled."""
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------------------

    def _drain(self, max_messages: int) -> list[bytes]:
        self._check_open()
        batch: list[bytes] = []
        recv = self._sock.recv
        try:
            with _map_zmq_errors:
                while len(batch) < max_messages:
                    batch.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        finally:
            self._poke()
        return batch

    def _take_multipart(self) -> list[bytes] | None:
        self._check_open()
        try:
            with _map_zmq_errors:
                return self._sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        finally:
            self._poke()

    async def _wait_for(self, flag: int) -> None:
        """Return once ``EVENTS`` has *flag*, sleeping on the fd (or parked) meanwhile."""
        while True:
            self._check_open()
            with _map_zmq_errors:
                events = cast(int, self._sock.getsockopt(zmq.EVENTS))
            if events & flag:
                return
            if self._sleeper is not None:
                # Reading EVENTS may have consumed the edge the sleeper waits for: tell it.
                if events & self._sleeper_wants:
                    self._sleeper.cancel()
                await self._lot.park()  # woken when the sleeper wakes or the socket closes
                continue
            self._sleeper_wants = flag
            try:
                with trio.CancelScope() as self._sleeper:
                    await trio.lowlevel.wait_readable(self._fd)
            finally:
                self._sleeper = None
                self._lot.unpark_all()  # let parked tasks re-check EVENTS

    def _poke(self) -> None:
        """After any send/recv: EVENTS may have changed and the edge may be gone; wake waiters."""
        if self._sleeper is not None:
            self._sleeper.cancel()
        elif self._lot:
            self._lot.unpark_all()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the ZeroMQ socket was closed")


# -- CurveZMQ authentication: ZAP -----------------------------------------------------------


@attrs.frozen
class ZapRequest:
    """A ZAP request (RFC 27) for a connection to one of the context's bound CURVE sockets."""

    domain: str  # the bound socket's zap_domain
    address: str  # the client's IP address
    mechanism: str  # "CURVE" (or "NULL", "PLAIN" for sockets that are not CURVE servers)
    public_key: str | None  # the client's CURVE public key, Z85


async def serve_zap(
    ctx: zmq.Context[zmq.Socket[bytes]],
    authorize: Callable[[ZapRequest], bool],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer the ZAP requests of *ctx*'s CURVE servers with ``authorize(request)`` (200 when
    true, else 400), until cancelled. Started once its socket is bound: from then on every
    handshake on a bound CURVE socket of *ctx* waits for its answer.

    A client refused with 400 is told so (``EVENT_HANDSHAKE_FAILED_AUTH`` at its end) and
    libzmq does not try again: it is up to the client to reconnect.

    Resource handling: owns its REP socket (on :data:`ZAP_ENDPOINT`), closed on return.

    Error handling: *authorize* must not block; an exception it raises refuses the connection
    (500) and is logged. A context has at most one handler: a second one gets
    :exc:`trio.BrokenResourceError` (``EADDRINUSE``).
    """
    async with open_socket(ctx, SocketType.REP, keepalive=False) as rep:
        rep.bind(ZAP_ENDPOINT)
        task_status.started()
        while True:
            frames = await rep.receive_multipart()
            rep.send_multipart_nowait(_zap_reply(frames, authorize))


def _zap_reply(frames: list[bytes], authorize: Callable[[ZapRequest], bool]) -> list[bytes]:
    if len(frames) < 6 or frames[0] != _ZAP_VERSION:
        request_id = frames[1] if len(frames) > 1 else b""
        return [_ZAP_VERSION, request_id, b"400", b"malformed ZAP request", b"", b""]
    _, request_id, domain, address, _identity, mechanism, *credentials = frames
    key = None
    if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
        key = z85.encode(credentials[0]).decode("ascii")
    request = ZapRequest(
        domain.decode(errors="replace"),
        address.decode(errors="replace"),
        mechanism.decode(errors="replace"),
        key,
    )
    try:
        allowed = authorize(request)
    except Exception:
        log.exception("the ZAP policy failed on %r", request)
        return [_ZAP_VERSION, request_id, b"500", b"internal error", b"", b""]
    if allowed:
        return [_ZAP_VERSION, request_id, b"200", b"OK", (key or "").encode(), b""]
    return [_ZAP_VERSION, request_id, b"400", b"unknown key", b"", b""]


# -- socket monitors -------------------------------------------------------------------------


class Handshake:
    """What a socket monitor reports (the events :func:`open_monitor` asks for)."""

    SUCCEEDED: Final = "succeeded"  # a connection is up and authenticated
    REFUSED: Final = "refused"  # the server's ZAP handler said no (libzmq gives up)
    MISMATCH: Final = "mismatch"  # a protocol error: e.g. CURVE against NULL (libzmq gives up)
    FAILED: Final = "failed"  # no detail: e.g. a wrong server key (libzmq tries again)
    DISCONNECTED: Final = "disconnected"


_EVENTS: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: Handshake.SUCCEEDED,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: Handshake.REFUSED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: Handshake.MISMATCH,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: Handshake.FAILED,
    zmq.EVENT_DISCONNECTED: Handshake.DISCONNECTED,
}


@attrs.frozen
class SocketEvent:
    what: str  # a Handshake value
    endpoint: str
    value: int  # the ZAP status code (REFUSED), a protocol error code, an errno, or an fd


class Monitor:
    """The handshakes and disconnections of one socket (see :func:`open_monitor`).

    Resource handling: owns a PAIR socket on the monitor's ``inproc://`` endpoint. Closing it
    first turns the monitoring off: a socket whose monitor's reader closed stops working
    properly (measured with libzmq 4.3.5: a SUB reconnected afterwards received nothing).
    """

    def __init__(self, sock: ZmqSocket, pair: ZmqSocket) -> None:
        self._sock = sock
        self._pair = pair

    async def next_event(self) -> SocketEvent:
        """The next event the socket reports."""
        while True:
            event = parse_monitor_message(await self._pair.receive_multipart())
            what = _EVENTS.get(int(event["event"]))
            if what is not None:
                endpoint = event["endpoint"]
                text = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else ""
                return SocketEvent(what, text, int(event["value"]))

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.stop_monitor()
        self._pair.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def open_monitor(ctx: zmq.Context[zmq.Socket[bytes]], sock: ZmqSocket, name: str) -> Monitor:
    """Report *sock*'s handshakes and disconnections (:meth:`Monitor.next_event`). *name*
    makes the ``inproc://`` endpoint unique in *ctx*.

    Resource handling: the caller owns the returned monitor; close it before *sock*.
    """
    endpoint = f"inproc://roomd-monitor-{name}-{id(sock):x}"
    sock.start_monitor(endpoint, sum(_EVENTS))
    pair = open_socket(ctx, SocketType.PAIR, keepalive=False)
    try:
        pair.connect(endpoint)
    except BaseException:
        pair.close()
        sock.stop_monitor()
        raise
    return Monitor(sock, pair)


class _MapZmqErrors:
    """Context manager: a ``ZMQError`` meaning "socket gone" becomes ``ClosedResourceError``;
    any other (but ``Again``, which callers handle) becomes ``BrokenResourceError``."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not isinstance(exc_value, zmq.ZMQError) or isinstance(exc_value, zmq.Again):
            return
        if exc_value.errno in _CLOSED_ERRNOS:
            raise trio.ClosedResourceError("the ZeroMQ socket was closed") from exc_value
        raise trio.BrokenResourceError(f"ZeroMQ: {exc_value}") from exc_value


_map_zmq_errors: Final = _MapZmqErrors()

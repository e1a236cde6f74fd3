"""The node: what an application embeds, and what `roomd` runs.

A node accepts TCP connections on one port: plain HTTP requests get small answers (``/health``,
``/metrics``), WebSocket upgrades become connections. It composes the layers below: the hub
(its connections and rooms), the router (where pushes go), the cluster layer (the other nodes,
or none), the frame dispatcher with the built-in events, and server-to-client requests.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import secrets
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import attrs
import trio

from .._config import Config, configure_node
from .._version import __version__
from ..cluster import (
    BusFactory,
    CallHandler,
    ClusterReplies,
    ClusterView,
    HistoryLimits,
    Replies,
    make_cluster,
)
from ..hub import Connection, Hub, RateLimiter
from ..io import (
    Flusher,
    Readers,
    TimerWheel,
    Transport,
    read_request,
    receive_now,
    refuse,
    send_all,
    send_now,
    tls_handshake,
    until_next,
)
from ..protocol import PROTOCOL_VERSION, CloseCode, Push, PushTemplate, RoomRef, Session
from ..ws import (
    MAX_HEAD_BYTES,
    BadRequest,
    Deflater,
    HandshakeError,
    HttpRequest,
    TlsSession,
    accept_response,
    check_upgrade,
    json_response,
    negotiate_deflate,
    parse_head,
)
from ._access import Authorizer, Gate, OriginPolicy
from ._admission import Admission, Refusal, Ticket
from ._auth import Authenticator, AuthError, Identity, check_secret
from ._builtins import BUILTIN_EVENTS, Builtins
from ._dispatch import FrameDispatcher, Handler
from ._drain import Drainer
from ._http import HttpFront, Route
from ._ids import new_message_id
from ._lag import LoopLag
from ._presence import PresenceFeed
from ._requests import Requests
from ._router import Router
from ._sessions import DEV_TOKEN_KEY, ResumeTokens, Sessions, detaches
from ._stats import Stats, make_registry

log = logging.getLogger("roomd.node")

ACCEPT_BACKOFF = 0.1  # seconds to wait when accept() fails for lack of resources
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_PEER_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
ACCEPT_BATCH = 64  # connections accepted in a row before other tasks run
_NODELAY_INHERITED = sys.platform == "linux"  # (accepted sockets get the listener's TCP_NODELAY)
_DEFER_ACCEPT: int | None = getattr(socket, "TCP_DEFER_ACCEPT", None)  # (Linux)

H = TypeVar("H", bound=Handler)
# What the node does with a connection just accepted, given its peer's address (at once: it
# starts a task for whatever waits).
Take = Callable[[socket.socket, str], None]
# A WebSocket upgrade accepted: the bytes after the request head, who, and the compression.
Upgrade = tuple[bytes, Identity, "Deflater | None"]
CH = TypeVar("CH", bound=CallHandler)


def _listening(listeners: list[trio.SocketListener]) -> list[socket.socket]:
    """The listening sockets of Trio's ``listeners``, as plain non-blocking sockets the node
    accepts from directly (:meth:`Node._accept_one`): not through Trio's socket wrapper, an
    accepted connection costs three system calls (``accept4``, the ``getsockname`` of
    Python's socket object, ``FIONBIO``) instead of nine.

    Nagle's algorithm is off on them, which Linux's accepted sockets inherit. On Linux the
    kernel hands a connection over once its first bytes have come (``TCP_DEFER_ACCEPT``, as
    nginx's ``deferred``): the request head is then there when it is accepted, and answered at
    once (:meth:`Node._take`). Every client of these ports speaks first (HTTP, TLS); one that
    sends nothing is accepted a second late, and costs the node nothing meanwhile.
    """
    socks = []
    for listener in listeners:
        trio_sock = listener.socket
        sock = socket.socket(
            trio_sock.family, trio_sock.type, trio_sock.proto, fileno=trio_sock.detach()
        )
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _DEFER_ACCEPT is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _DEFER_ACCEPT, 1)
        socks.append(sock)
    return socks


async def _send_reply(sock: socket.socket, reply: bytes, tls: TlsSession | None = None) -> None:
    """Send the answer of a connection that closes after it, for at most a second."""
    with trio.move_on_after(1.0), contextlib.suppress(OSError):
        await send_all(sock, reply, tls)


@attrs.frozen
class Context:
    """What an event handler receives besides the data: the node and the sending connection."""

    node: Node
    connection: Connection

    @property
    def user(self) -> str:
        return self.connection.user

    @property
    def session_id(self) -> str:
        return self.connection.id

    @property
    def claims(self) -> dict[str, Any]:
        return self.connection.claims

    async def request(self, event: str, data: Any = None, timeout: float = 10.0) -> Any:
        """Ask the sending client and wait for its acknowledgement (see :meth:`Node.request`)."""
        return await self.node.request(self.connection.id, event, data, timeout=timeout)


class Node:
    """A roomd node.

    Run it with ``await nursery.start(node.run)`` (the started value is the bound port) and stop
    it with :meth:`shutdown`. Register application events with :meth:`on`. ``bus`` replaces the
    ZeroMQ bus of a cluster node (a :class:`~roomd.cluster.MemoryNetwork`'s, to run several
    nodes in one process).

    Resource handling: :meth:`run` owns every task and socket of the node; when it returns, all
    connections are closed.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        name: str | None = None,
        host: str | None = None,
        port: int | None = None,
        bus: BusFactory | None = None,
    ) -> None:
        self.config = configure_node(config if config is not None else Config(), name, host, port)
        auth = self.config.auth
        if auth.secret is None and not auth.dev:
            raise ValueError("no auth secret: set auth.secret or ROOMD_SECRET, or use dev mode")
        if auth.secret is not None:
            check_secret(auth.secret)
        for token, what in (
            (self.config.access.admin_token, "access.admin_token"),
            (self.config.metrics.token, "metrics.token"),
        ):
            if token is not None:
                check_secret(token, what)
        self.name = self.config.node.name
        self.payload_limits = self.config.limits.payload_limits()
        self.authenticator = Authenticator(auth.secret, auth.dev, auth.leeway, self.payload_limits)
        self.stats = Stats()
        self.lag = LoopLag(self.name)  # how late the event loop runs
        self.port: int | None = None
        self.started_at = time.time()
        self.epoch = secrets.randbits(62)
        self.hub = Hub()
        self.flusher = Flusher()  # writes connections' outboxes and the bus, once per round
        self.readers = Readers()  # reads every connection's socket, in one task
        self.view = ClusterView(self.name, self.epoch)
        self.router = Router(
            self.hub, self.view, self.load, self.config.limits.announce_members_up_to
        )
        self.cluster = make_cluster(
            self.name,
            self.epoch,
            view=self.view,
            section=self.config.cluster,
            host=self.router,
            flusher=self.flusher,
            history=HistoryLimits(self.config.history.max_messages, self.config.history.max_age),
            bus=bus,
        )
        self.router.attach(self.cluster)
        self.requests = Requests(self.name, self.hub, self.view, self.cluster)
        self.tls_context = self._load_tls()  # None: plain ws:// and http://
        self.gate = Gate(self.config.access, auth.dev, self._context)
        self.origins = OriginPolicy.of(
            self.config.access.allowed_origins, auth.dev, tls=self.tls_context is not None
        )
        self.presence = PresenceFeed(self.hub, self.view)
        self.router.on_presence = self.presence.changed
        builtins = Builtins(
            self.config,
            self.router,
            self.requests,
            self.view,
            self.cluster.streams,
            self.presence,
            self.cluster_stats,
            self.gate,
        )
        cluster = self.config.cluster
        self.sessions = Sessions(
            self.name,
            self.hub,
            self.router,
            self.cluster.streams,
            ResumeTokens(auth.secret or DEV_TOKEN_KEY),
            self.config.sessions.resume_window,
            ended=self._session_ended,
            cluster=self.cluster,
            notice=cluster.heartbeat_interval * (cluster.heartbeat_misses + 1),
            epoch=self.epoch,
        )
        self._dispatch = FrameDispatcher(
            self.name,
            self.config,
            self.stats,
            self.router,
            builtins,
            self.sessions,
            self._context,
        )
        self.metrics_port: int | None = None  # where /metrics is served, once running
        compression = self.config.compression
        self._deflaters = {  # by window bits, shared by the connections that agreed on them
            compression.window_bits: Deflater(
                compression.window_bits, compression.level, compression.threshold
            )
        }
        self.admission = Admission(self.config.limits)  # every TCP connection, counted
        self._connected: dict[Connection, Transport] = {}  # every WebSocket, handshaking or open
        hb = self.config.heartbeat
        sweep = min(hb.interval, hb.timeout, self.config.limits.handshake_timeout) / 4
        self._wheel: TimerWheel[Connection] = TimerWheel(min(1.0, max(0.01, sweep)))
        self._stop = trio.Event()
        self._idle = trio.Event()
        self.draining = False
        self._drainer = Drainer(self.name, self.view, self.config.shutdown)
        self._nursery: trio.Nursery | None = None
        self._accepting = trio.CancelScope()
        registry = make_registry(self.stats, self._gauges, self._counters)
        self.http = HttpFront(
            self.config,
            self.stats,
            self.gate,
            self.authenticator,
            self.health,
            registry,
            drain=self.drain,
            name=self.name,
        )

    def _context(self, conn: Connection) -> Context:
        return Context(self, conn)

    # Application API ------------------------------------------------------------------------------

    def on(self, event: str) -> Callable[[H], H]:
        """Register ``handler(ctx, data)`` for client event ``event``.

        The handler's return value is the acknowledgement's result; a :class:`HandlerError` it
        raises becomes an error acknowledgement. Events of one connection are handled in order.
        """
        if event in BUILTIN_EVENTS:
            raise ValueError(f"{event!r} is a built-in event")

        def register(handler: H) -> H:
            self._dispatch.handlers[event] = handler
            return handler

        return register

    def authorize(self, hook: Authorizer) -> Authorizer:
        """Register ``hook(ctx, access) -> bool``, asked before every join, send and typing
        notice of a client (after the token's room grants); ``False`` refuses it with
        ``forbidden``, a :class:`HandlerError` with its own code. Usable as a decorator.

        The hook runs in the connection's reader, so it must not block; it sees the
        :class:`Access` and the :class:`Context` (user, claims). See docs/operations.md.
        """
        self.gate.hooks.append(hook)
        return hook

    def on_cluster(self, event: str) -> Callable[[CH], CH]:
        """Register ``handler(data, origin_node)`` for cluster calls named ``event``."""

        def register(handler: CH) -> CH:
            self.cluster.calls.handlers[event] = handler
            return handler

        return register

    def route(self, path: str, handler: Route) -> None:
        """Serve plain HTTP GET ``path`` with ``handler(request) -> response bytes``."""
        self.http.routes[path] = handler

    def send_to_room(
        self, room: str, event: str, data: Any = None, *, ns: str = "/", volatile: bool = False
    ) -> str:
        """Push ``event`` to every member of a room, wherever connected; the message's id.
        A reliable push joins the room's stream (replayed to members who resume)."""
        template = PushTemplate.of(Push(event, data, room=RoomRef(ns, room)), volatile=volatile)
        message_id = new_message_id()
        self.router.route_room((ns, room), template, message_id=message_id)
        return message_id

    def send_to_user(self, user: str, event: str, data: Any = None, volatile: bool = False) -> str:
        """Push ``event`` to every connection of ``user``; the message's id."""
        return self.send_to_users([user], event, data, volatile)

    def send_to_users(
        self, users: Iterable[str], event: str, data: Any = None, volatile: bool = False
    ) -> str:
        """Push ``event`` to every connection of each of ``users``; the message's id. A
        reliable push joins each user's inbox stream (replayed to sessions that resume)."""
        targets = sorted(set(users))
        template = PushTemplate.of(Push(event, data, to=targets), volatile=volatile)
        message_id = new_message_id()
        self.router.route_users(targets, template, message_id=message_id)
        return message_id

    def broadcast(self, event: str, data: Any = None, volatile: bool = False) -> int:
        """Push ``event`` to every connection."""
        return self.router.route_all(PushTemplate.of(Push(event, data), volatile=volatile))

    def kick(self, user: str, reason: str = "kicked") -> int:
        """Close every connection of ``user`` with 4010; how many there were."""
        conns = list(self.hub.user_connections(user))
        for conn in conns:
            conn.close(CloseCode.KICKED, reason)
        return len(conns)

    def online_users(self) -> list[str]:
        """Users online anywhere in the cluster, sorted."""
        return self.view.online_users()

    def room_members(self, room: str, ns: str = "/") -> list[str]:
        """Members of a room anywhere in the cluster, sorted."""
        return self.view.room_members((ns, room))

    async def request(
        self, session_id: str, event: str, data: Any = None, *, timeout: float = 10.0
    ) -> Any:
        """Send a request to one connection of this node and wait for its acknowledgement's
        result. Error handling: :class:`RequestTimeout` if no answer comes in time (or the
        connection is gone), :class:`AckError` if the client answers with an error."""
        return await self.requests.request(session_id, event, data, timeout=timeout)

    async def request_room(
        self, room: str, event: str, data: Any = None, *, ns: str = "/", timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send a request to every member connection of a room, on every node, and count the
        acknowledgements: ``{"acked", "missing", "errors", "nodesMissing"}``."""
        return await self.requests.request_room((ns, room), event, data, timeout=timeout)

    async def cluster_call(
        self,
        event: str,
        data: Any = None,
        *,
        targets: list[str] | None = None,
        except_self: bool = False,
        expected: int | None = None,
        timeout: float | None = None,
    ) -> ClusterReplies:
        """Call ``event`` on several nodes and gather their replies (see
        :meth:`roomd.cluster.Calls.call`)."""
        return await self.cluster.calls.call(
            event,
            data,
            targets=targets,
            except_self=except_self,
            expected=expected,
            timeout=timeout,
        )

    @contextlib.asynccontextmanager
    async def cluster_replies(
        self,
        event: str,
        data: Any = None,
        *,
        targets: list[str] | None = None,
        except_self: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[list[str], Replies]]:
        """The streaming form of :meth:`cluster_call`: ``async with node.cluster_replies(...)
        as (targets, replies): async for reply in replies: ...``."""
        async with self.cluster.calls.replies(
            event, data, targets=targets, except_self=except_self, timeout=timeout
        ) as streamed:
            yield streamed

    def drain(self) -> bool:
        """Move every client to the other nodes, then stop (see :mod:`._drain`); ``False`` if
        the node is not running, or drains or stops already."""
        if self._nursery is None or self.draining or self._stop.is_set():
            return False
        self.draining = True
        self._accepting.cancel()
        self.cluster.drain()
        self._nursery.start_soon(self._drain)
        return True

    async def _drain(self) -> None:
        await self._drainer.run(lambda: self._connected, self._idle.wait)
        log.info(
            "%s drained: %d clients asked to move, %d closed for not moving in time",
            self.name,
            self._drainer.asked,
            self._drainer.closed,
        )
        self.shutdown()

    def reload_tls(self) -> bool:
        """Read the certificate and key again (``roomd`` does on SIGHUP); connections made
        from now on use them. On failure the node keeps the ones it has; whether it reloaded."""
        if self.tls_context is None:
            return False
        try:
            self.tls_context = self._load_tls()
        except (OSError, ValueError) as exc:
            log.error("TLS certificate not reloaded, the previous one stays: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.config.tls.cert)
        return True

    def _load_tls(self) -> ssl.SSLContext | None:
        section = self.config.tls
        if section.cert is None and section.key is None:
            return None
        if section.cert is None or section.key is None:
            raise ValueError("tls.cert and tls.key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(section.cert, section.key)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot use {section.cert} and {section.key}: {exc}") from None
        return context

    def shutdown(self) -> None:
        """Stop accepting, close every connection with 1001 and make :meth:`run` return."""
        self._stop.set()

    # Running --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`shutdown`; ``task_status.started`` gets the bound port."""
        cfg = self.config
        listeners = _listening(await trio.open_tcp_listeners(cfg.node.port, host=cfg.node.host))
        self.port = listeners[0].getsockname()[1]
        ops: list[socket.socket] = []
        try:
            if cfg.metrics.port is not None:
                host = cfg.metrics.host or cfg.node.host
                ops = _listening(await trio.open_tcp_listeners(cfg.metrics.port, host=host))
                self.metrics_port = ops[0].getsockname()[1]
                log.info("%s serves /metrics on %s:%s", self.name, host, self.metrics_port)
            else:
                self.metrics_port = self.port
            self.started_at = time.time()
            log.info("%s listening on %s:%s", self.name, cfg.node.host, self.port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.flusher.run)  # first: the bus writes through it too
                await nursery.start(self.readers.run)
                nursery.start_soon(self.presence.run)
                self.sessions.start(nursery.start_soon)
                await nursery.start(self.cluster.run)  # at most cluster.ready_timeout
                accept = self._accepting = trio.CancelScope()
                sweep = trio.CancelScope()
                self._nursery = nursery
                serving: list[tuple[socket.socket, Take]] = [
                    (listener, self._take) for listener in listeners
                ]
                serving += [(listener, self._take_metrics) for listener in ops]
                nursery.start_soon(self._accept, serving, accept)
                nursery.start_soon(self._sweep, sweep)
                task_status.started(self.port)
                await self._stop.wait()
                log.info(
                    "%s shutting down: closing %d connections", self.name, len(self._connected)
                )
                self._nursery = None
                accept.cancel()
                for transport in list(self._connected.values()):
                    transport.close(CloseCode.GOING_AWAY)
                with trio.move_on_after(cfg.shutdown.grace):
                    if self._connected:
                        await self._idle.wait()
                sweep.cancel()
                self.sessions.end_all()
                await self.cluster.leave()
                nursery.cancel_scope.cancel()
        finally:
            for sock in (*listeners, *ops):  # (closed already, unless it failed first)
                sock.close()
        log.info("%s stopped", self.name)

    async def _accept(
        self,
        listeners: list[tuple[socket.socket, Take]],
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            async with trio.open_nursery() as accepting:
                for listener, take in listeners:
                    accepting.start_soon(self._accept_one, listener, take)

    async def _accept_one(self, sock: socket.socket, take: Take) -> None:
        """Accept connections on ``sock`` (see :func:`_listening`), all that wait at each
        wake-up (at most :data:`ACCEPT_BATCH` in a row), and ``take`` each. Resource handling:
        ``sock`` is closed when this returns."""
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(ACCEPT_BATCH):
                    try:
                        accepted, address = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _ACCEPT_PEER_ERRNOS:
                            continue  # (that connection failed before it was accepted)
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        log.error("accept failed (%s); retrying in %.1f s", exc, ACCEPT_BACKOFF)
                        await trio.sleep(ACCEPT_BACKOFF)
                        break
                    accepted.setblocking(False)
                    if not _NODELAY_INHERITED:
                        accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    take(accepted, address[0])
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    async def _sweep(self, scope: trio.CancelScope) -> None:
        """The node-wide heartbeat: ping idle connections, close silent and stalled ones.

        Each beat looks only at the connections due then (:class:`~roomd.io.TimerWheel`): an
        idle connection is looked at when it has been silent for ``heartbeat.interval`` (to
        ping it) and ``heartbeat.timeout`` (to close it), one still in its handshake at its
        deadline, whatever the number of connections held.
        """
        wheel = self._wheel
        with scope:
            while True:
                # (on the common beat, with the cluster's ticker; it measures the loop's lag too)
                await self.lag.sleep(until_next(wheel.period))
                now = trio.current_time()
                self.sessions.expire(now)
                connected = self._connected
                for conn in wheel.due(now):
                    transport = connected.get(conn)
                    if transport is not None:
                        when = self._look_at(conn, transport, now)
                        if when is not None:
                            wheel.at(conn, when)

    def _look_at(self, conn: Connection, transport: Transport, now: float) -> float | None:
        """Ping ``conn`` or close it if it is due; when to look at it next (``None``: it is
        closing, and its close timer ends it)."""
        hb = self.config.heartbeat
        if transport.closing:
            return None
        if transport.paused:
            return now  # (this node does not read it: its silence means nothing; next beat)
        if not conn.session.is_open:
            if now > conn.handshake_deadline:
                transport.close(CloseCode.HANDSHAKE_TIMEOUT)
                return None
            return min(conn.handshake_deadline, now + hb.interval)
        silent = now - transport.last_seen
        if silent > hb.timeout:
            transport.close(CloseCode.HEARTBEAT_TIMEOUT, discard=True)
            return None
        if silent > hb.interval:
            if transport.last_ping < transport.last_seen:
                transport.ping(now)
            return transport.last_seen + hb.timeout
        return transport.last_seen + hb.interval

    def _take(self, sock: socket.socket, peer: str) -> None:
        """A connection accepted on the WebSocket port.

        Served here and now when it can be, the usual case: a plain connection whose request
        head has already arrived whole (a client sends it as it connects), an upgrade the node
        accepts, and a kernel that takes the answer at once. That costs no task, no cancel scope
        and no wait. Anything else (TLS, a head still on its way, plain HTTP, a refusal) is
        served by a task of the node's nursery, which goes on from what was read here.
        """
        ticket = self.admission.enter(peer)
        nursery = self._nursery
        assert nursery is not None  # (accepting only while the node runs)
        if isinstance(ticket, Refusal) or self.tls_context is not None:
            nursery.start_soon(self._serve_tcp, sock, ticket)
            return
        try:
            upgrade = self._upgrade_at_once(sock, ticket, nursery)
        except Exception:  # a defect: it ends this connection, never the node
            log.exception("handshake failed; the connection is dropped")
            self._drop(sock, ticket)
            return
        if upgrade is None:
            return  # a task took it over
        self.admission.handshake_done(ticket)
        deadline = trio.current_time() + self.config.limits.handshake_timeout
        transport, conn = self._open(sock, upgrade, deadline, None)
        closed = functools.partial(self._closed, ticket)
        transport.start_idle(self._dispatch.on_message, conn, self._dispatch.on_control, closed)

    def _upgrade_at_once(
        self, sock: socket.socket, ticket: Ticket, nursery: trio.Nursery
    ) -> Upgrade | None:
        """:meth:`_take`'s handshake: the upgrade, answered; or ``None``, when a task of
        ``nursery`` took the connection over."""
        received = receive_now(sock)
        end = received.find(b"\r\n\r\n")
        request = None
        if 0 <= end <= MAX_HEAD_BYTES and len(received) == end + 4:
            with contextlib.suppress(BadRequest):  # (the task answers it)
                request = parse_head(received[:end])
        if request is None or not request.upgrade:
            nursery.start_soon(self._serve_tcp, sock, ticket, received)
            return None
        reply, upgrade = self._answer(request, ticket)
        if upgrade is None:
            nursery.start_soon(self._refuse_upgrade, sock, ticket, reply)
            return None
        sent = send_now(sock, reply)
        if sent < len(reply):  # (a fresh socket's buffer takes a 101 whole, but if not)
            nursery.start_soon(self._serve_tcp, sock, ticket, b"", (reply[sent:], upgrade))
            return None
        return upgrade

    async def _serve_tcp(
        self,
        sock: socket.socket,
        ticket: Ticket | Refusal,
        received: bytes = b"",
        answered: tuple[bytes, Upgrade] | None = None,
    ) -> None:
        """One TCP connection: plain HTTP, or a WebSocket for as long as it lives; or an
        immediate refusal, when a cap of :class:`Admission` is reached (``ticket``). The
        handshake goes on from the bytes ``received`` already, or (``answered``) from the part
        of the 101 still to send.

        Resource handling: the socket is closed before this returns (for a WebSocket, by the
        transport that took it over).
        """
        if isinstance(ticket, Refusal):
            self.stats.rejected[ticket.reason] += 1
            if self.tls_context is None:
                await refuse(sock, ticket.reply)
            else:  # no TLS handshake for it: closed without an answer
                trio.lowlevel.notify_closing(sock)
                sock.close()
            return
        handed_over = False
        try:
            handed_over = await self._serve_admitted(sock, ticket, received, answered)
        finally:
            if not handed_over:  # (cancelled as it was handed over: it has left already)
                self.admission.leave(ticket)

    async def _serve_admitted(
        self,
        sock: socket.socket,
        ticket: Ticket,
        received: bytes,
        answered: tuple[bytes, Upgrade] | None,
    ) -> bool:
        """The handshake, then the connection is handed over to the node's :class:`Readers`
        (``True``: it leaves the admission when it closes), or it is done (``False``)."""
        deadline = trio.current_time() + self.config.limits.handshake_timeout
        tls = TlsSession(self.tls_context) if self.tls_context is not None else None
        try:
            if answered is None:
                upgrade = await self._handshake(sock, ticket, deadline, tls, received)
            else:
                upgrade = await self._send_rest(sock, deadline, *answered)
        except Exception:  # a defect: it ends this connection, never the node
            log.exception("handshake failed; the connection is dropped")
            upgrade = None
        self.admission.handshake_done(ticket)
        if upgrade is None:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            return False
        transport, conn = self._open(sock, upgrade, deadline, tls)
        del upgrade  # nothing of the handshake stays with the connection
        closed = functools.partial(self._closed, ticket)
        await transport.start(self._dispatch.on_message, conn, self._dispatch.on_control, closed)
        return True

    def _open(
        self, sock: socket.socket, upgrade: Upgrade, deadline: float, tls: TlsSession | None
    ) -> tuple[Transport, Connection]:
        """The transport and connection of a WebSocket just upgraded (not started yet)."""
        limits = self.config.limits
        trailing, identity, deflater = upgrade
        transport = Transport(
            sock,
            self.stats,
            self.flusher,
            self.readers,
            trailing=trailing,
            max_message=limits.max_frame_bytes,
            max_bytes=limits.outbox_max_bytes,
            close_timeout=limits.close_timeout,
            deflate=deflater is not None,
            tls=tls,
        )
        conn = Connection(
            Session(identity.user),
            transport,
            RateLimiter(limits.rate, limits.burst, trio.current_time()),
            deadline,
            identity.claims,
            deflater,
        )
        if self._stop.is_set():  # upgraded while the node began to shut down
            transport.close(CloseCode.GOING_AWAY)
        elif self.admission.over_capacity():
            self.stats.rejected["max_connections"] += 1
            transport.close(CloseCode.TRY_AGAIN_LATER)
        self.stats.connections_total += 1
        self._connected[conn] = transport
        # (looked at first when its handshake ends, or when it would be pinged if open)
        self._wheel.at(conn, min(deadline, transport.last_seen + self.config.heartbeat.interval))
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        return transport, conn

    def _closed(self, ticket: Ticket, conn: Connection) -> None:
        try:
            self._disconnected(conn)
        finally:
            self.admission.leave(ticket)

    async def _handshake(
        self,
        sock: socket.socket,
        ticket: Ticket,
        deadline: float,
        tls: TlsSession | None,
        received: bytes,
    ) -> Upgrade | None:
        """Answer plain HTTP, or accept a WebSocket upgrade: its trailing bytes, identity and
        compression.

        Returns ``None`` when the connection is done (answered, refused or dropped).
        """
        reply: bytes | None = None
        with trio.move_on_at(deadline):
            try:
                if tls is not None:
                    await tls_handshake(sock, tls)
                request = await read_request(sock, tls, received)
            except BadRequest as exc:
                self.stats.rejected["400"] += 1
                reply = json_response(400, {"error": str(exc)})
            except OSError:
                return None
            else:
                reply, upgrade = self._answer(request, ticket)
                if upgrade is not None:
                    try:
                        await send_all(sock, reply, tls)
                    except OSError:
                        return None
                    return upgrade
        if reply is not None and (tls is None or tls.handshake_done):
            await _send_reply(sock, reply, tls)
        return None

    async def _send_rest(
        self, sock: socket.socket, deadline: float, rest: bytes, upgrade: Upgrade
    ) -> Upgrade | None:
        """The rest of a 101 the kernel did not take at once (:meth:`_take`)."""
        with trio.move_on_at(deadline):
            try:
                await send_all(sock, rest)
            except OSError:
                return None
            return upgrade
        return None

    async def _refuse_upgrade(self, sock: socket.socket, ticket: Ticket, reply: bytes) -> None:
        """Send ``reply`` to an upgrade refused at once (:meth:`_take`), then close."""
        try:
            await _send_reply(sock, reply)
        finally:
            self._drop(sock, ticket)

    def _drop(self, sock: socket.socket, ticket: Ticket) -> None:
        """Close a connection the handshake did not hand over, and uncount it."""
        self.admission.handshake_done(ticket)
        trio.lowlevel.notify_closing(sock)
        sock.close()
        self.admission.leave(ticket)

    def _answer(self, request: HttpRequest, ticket: Ticket) -> tuple[bytes, Upgrade | None]:
        """What to send in answer to ``request``, and the WebSocket upgrade it makes
        (``None``: the connection closes after the answer)."""
        try:
            if not request.upgrade:
                return self.http.answer(request), None
            if request.path not in ("/", "/ws"):
                raise HandshakeError(404, "no WebSocket endpoint at this path")
            check_upgrade(request)
            if not self.origins.allows(request):
                log.info(
                    "upgrade from %s refused: origin %r not allowed",
                    ticket.address,
                    request.header("origin")[:200],
                )
                raise HandshakeError(403, "origin not allowed")
            identity = self._authenticate(request, ticket.address)
            refusal = self.admission.add_user(ticket, identity.user)
            if refusal is not None:
                self.stats.rejected[refusal.reason] += 1
                return refusal.reply, None
            extensions, deflater = self._negotiate_deflate(request)
            return accept_response(request, extensions), (request.trailing, identity, deflater)
        except HandshakeError as exc:
            self.stats.rejected[str(exc.status)] += 1
            return exc.reply, None
        except BadRequest as exc:
            self.stats.rejected["400"] += 1
            return json_response(400, {"error": str(exc)}), None

    def _negotiate_deflate(self, request: HttpRequest) -> tuple[str | None, Deflater | None]:
        """permessage-deflate, if the client offers it and the node allows it: the extension
        field of the answer and the (shared) deflater of the window size agreed."""
        offer = request.header("sec-websocket-extensions")
        section = self.config.compression
        if not offer or not section.enabled:
            return None, None
        agreed = negotiate_deflate(offer, section.window_bits)
        if agreed is None:
            return None, None
        extensions, bits = agreed
        deflater = self._deflaters.get(bits)
        if deflater is None:
            deflater = self._deflaters[bits] = Deflater(bits, section.level, section.threshold)
        return extensions, deflater

    def _authenticate(self, request: HttpRequest, peer: str) -> Identity:
        try:
            return self.authenticator.authenticate(request)
        except AuthError as exc:
            log.info("sign-in refused from %s: %s", peer, exc.reason)
            raise HandshakeError(
                401, exc.public, (("WWW-Authenticate", 'Bearer realm="roomd"'),)
            ) from None

    def _disconnected(self, conn: Connection) -> None:
        transport = self._connected.pop(conn)
        self._wheel.discard(conn)
        current = self.hub.connections.get(conn.id) is conn
        if self.sessions.moving(conn):
            pass  # handed over to another node: it ends by itself
        elif conn.session.is_open and current and detaches(transport.close_code):
            self.sessions.detach(conn)  # resumable for sessions.resume_window
        else:
            was_open = conn.session.is_open
            conn.session.close()
            self.router.closed(conn, was_open)
        for waiter in conn.pending.values():
            waiter.event.set()
        if not self._connected:
            self._idle.set()

    def _session_ended(self, conn: Connection) -> None:
        """A detached session that was not resumed in time (or the node stops)."""
        conn.session.close()
        self.router.closed(conn, True)

    # HTTP -----------------------------------------------------------------------------------------

    def _take_metrics(self, sock: socket.socket, peer: str) -> None:
        assert self._nursery is not None  # (accepting only while the node runs)
        self._nursery.start_soon(self._serve_metrics, sock, peer)

    async def _serve_metrics(self, sock: socket.socket, peer: str) -> None:
        await self.http.serve_metrics(sock, peer, self.admission)

    def health(self, operator: bool = True) -> dict[str, Any]:
        """What ``GET /health`` answers; room names only for an ``operator``."""
        health: dict[str, Any] = {
            "name": self.name,
            "status": "draining" if self._stop.is_set() or self.draining else "ok",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime": round(time.time() - self.started_at, 3),
            "connections": len(self._connected),
            "users": len(self.hub.users),
            "rooms": len(self.hub.rooms),
        }
        if self.cluster.mode != "none":
            stats = self.cluster_stats()
            if not operator:
                del stats["rooms"], stats["roomsTruncated"]
            health["cluster"] = stats
        return health

    def load(self) -> dict[str, Any]:
        """What this node tells the others about itself in its heartbeats."""
        node = self.config.node
        scheme = "wss" if self.tls_context else "ws"
        return {
            "status": "draining" if self._stop.is_set() or self.draining else "up",
            "url": node.public_url or f"{scheme}://{node.host}:{self.port}/ws",
            "connections": len(self._connected),
            "users": len(self.hub.users),
            "rooms": len(self.hub.rooms),
        }

    def cluster_stats(self, max_rooms: int = 1000) -> dict[str, Any]:
        """Nodes with status and load, users online, room member counts (cluster-wide)."""
        view = self.view
        rooms = sorted(view.room_users.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        stats = self.cluster.stats()
        stats["usersOnline"] = view.online_count()
        stats["rooms"] = [
            {"ns": ns, "room": room, "members": len(users)}
            for (ns, room), users in rooms[:max_rooms]
        ]
        stats["roomsTruncated"] = len(rooms) > max_rooms
        return stats

    def _gauges(self) -> dict[str, float]:
        return {
            "open_connections": len(self._connected),
            "handshakes": self.admission.handshaking,
            "users": len(self.hub.users),
            "rooms": len(self.hub.rooms),
            "uptime_seconds": time.time() - self.started_at,
            "loop_lag_seconds": self.lag.recent_max(trio.current_time()),  # (a lower bound)
            **self.cluster.gauges(),
        }

    def _counters(self) -> dict[str, tuple[str, float]]:
        stalls = (
            f"Times the event loop ran a timer {self.lag.stall:g} s or more late (each logged).",
            self.lag.stalls,
        )
        return {"loop_stalls": stalls, **self.cluster.counters()}

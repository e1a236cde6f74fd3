"""The node: what an application embeds, and what `roomd` runs.

A node accepts TCP connections on one port: plain HTTP requests get small answers (``/health``,
``/metrics``), WebSocket upgrades become clients. It owns the hub (local clients and rooms), the
handler registry and the node-wide heartbeat sweep.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import trio
from prometheus_client.exposition import generate_latest

from . import __version__
from ._auth import Authenticator, AuthError, Identity
from ._builtins import BUILTINS
from ._config import Config
from ._dispatch import Dispatcher, Handler
from ._requests import ROOM_REQUEST, CallHandler, Requests
from ._stats import Stats, make_registry
from .cluster._cluster import Cluster
from .cluster._view import (
    ClusterView,
    Delta,
    Effect,
    Joined,
    Left,
    MemberJoined,
    MemberLeft,
    Online,
    Status,
    StatusChanged,
)
from .hub import Client, Hub, RateLimiter, RoomKey
from .io._http import BadRequest, HttpRequest, read_request, response, send_all
from .io._transport import Flusher, Transport
from .io._upgrade import HandshakeError, accept_response, check_upgrade, json_response
from .protocol import (
    PROTOCOL_VERSION,
    CloseCode,
    PayloadLimits,
    Push,
    PushTemplate,
    Session,
)
from .web import web_routes

log = logging.getLogger("roomd.node")

ACCEPT_BACKOFF = 0.1  # seconds to wait when accept() fails for lack of resources
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

H = TypeVar("H", bound=Handler)
Route = Callable[[HttpRequest], bytes]
CH = TypeVar("CH", bound=CallHandler)


class Node(Requests):
    """A roomd node.

    Run it with ``await nursery.start(node.run)`` (the started value is the bound port) and stop
    it with :meth:`shutdown`. Register application events with :meth:`on`.

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
    ) -> None:
        self.config = (config if config is not None else Config()).for_node(name, host, port)
        auth = self.config.auth
        if auth.secret is None and not auth.dev:
            raise ValueError("no auth secret: set auth.secret or ROOMD_SECRET, or use dev mode")
        self.payload_limits: PayloadLimits = self.config.limits.payload_limits()
        self.authenticator = Authenticator(auth.secret, auth.dev, auth.leeway, self.payload_limits)
        self.hub = Hub()
        self.flusher = Flusher()  # writes connections' outboxes and the bus, once per round
        self.epoch = secrets.randbits(62)
        self.view = ClusterView(self.name, self.epoch)
        section = self.config.cluster
        self.cluster: Cluster | None = None
        if section.mode != "none":
            self.cluster = Cluster(self, section, section.mesh_peers(self.name))
        self.stats = Stats()
        self.port: int | None = None
        self.started_at = time.time()
        self._dispatch = Dispatcher(self)
        self._cluster_handlers: dict[str, CallHandler] = {ROOM_REQUEST: self._on_room_request}
        if self.cluster is not None:
            self.cluster.handlers.update(self._cluster_handlers)
        self._routes: dict[str, Route] = {"/health": self._health_route, **web_routes()}
        self._connected: set[Client] = set()  # every WebSocket client, handshaking or open
        self._stop = trio.Event()
        self._idle = trio.Event()
        self._registry = make_registry(self.stats, self._gauges, self._counters)
        self._routes["/metrics"] = self._metrics_route

    # Application API ------------------------------------------------------------------------------

    def on(self, event: str) -> Callable[[H], H]:
        """Register ``handler(ctx, data)`` for client event ``event``.

        The handler's return value is the acknowledgement's result; a :class:`HandlerError` it
        raises becomes an error acknowledgement. Events of one connection are handled in order.
        """
        if event in BUILTINS:
            raise ValueError(f"{event!r} is a built-in event")

        def register(handler: H) -> H:
            self._dispatch.handlers[event] = handler
            return handler

        return register

    def on_cluster(self, event: str) -> Callable[[CH], CH]:
        """Register ``handler(data, origin_node)`` for cluster calls named ``event``."""

        def register(handler: CH) -> CH:
            self._cluster_handlers[event] = handler
            if self.cluster is not None:
                self.cluster.handlers[event] = handler
            return handler

        return register

    def route(self, path: str, handler: Route) -> None:
        """Serve plain HTTP GET ``path`` with ``handler(request) -> response bytes``."""
        self._routes[path] = handler

    def send_to_room(
        self, room: str, event: str, data: Any = None, *, ns: str = "/", volatile: bool = False
    ) -> int:
        """Push ``event`` to every member of a room; the number of local clients reached."""
        return self.route_room((ns, room), self._template(event, data, volatile))

    def send_to_user(self, user: str, event: str, data: Any = None, volatile: bool = False) -> int:
        """Push ``event`` to every connection of ``user``."""
        return self.route_users([user], self._template(event, data, volatile, to=[user]))

    def send_to_users(
        self, users: Iterable[str], event: str, data: Any = None, volatile: bool = False
    ) -> int:
        targets = sorted(set(users))
        return self.route_users(targets, self._template(event, data, volatile, to=targets))

    def broadcast(self, event: str, data: Any = None, volatile: bool = False) -> int:
        """Push ``event`` to every connected client."""
        return self.route_all(self._template(event, data, volatile))

    def kick(self, user: str, reason: str = "kicked") -> int:
        """Close every connection of ``user`` with 4010; how many there were."""
        clients = list(self.hub.user_clients(user))
        for client in clients:
            client.close(CloseCode.KICKED, reason)
        return len(clients)

    def online_users(self) -> list[str]:
        """Users online anywhere in the cluster, sorted."""
        return self.view.online_users()

    def room_members(self, room: str, ns: str = "/") -> list[str]:
        """Members of a room anywhere in the cluster, sorted."""
        return self.view.room_members((ns, room))

    def shutdown(self) -> None:
        """Stop accepting, close every connection with 1001 and make :meth:`run` return."""
        self._stop.set()

    # Routing --------------------------------------------------------------------------------------

    def _template(
        self, event: str, data: Any, volatile: bool, to: list[str] | None = None
    ) -> PushTemplate:
        return PushTemplate.of(Push(event, data, to=to), volatile=volatile)

    def route_room(
        self,
        key: RoomKey,
        template: PushTemplate,
        *,
        exclude: Client | None = None,
        skip_user: str | None = None,
    ) -> int:
        """Deliver to a room's members on this node and publish to the other nodes."""
        if self.cluster is not None:
            self.cluster.publish_room(key, template, skip_user)
        return self.route_room_local(key, template, exclude=exclude, skip_user=skip_user)

    def route_users(
        self, users: list[str], template: PushTemplate, sender: Client | None = None
    ) -> int:
        """Deliver to ``users`` everywhere; the sender's other connections get a copy too."""
        if self.cluster is not None:
            targets = set(users)
            if sender is not None:
                targets.add(sender.user)
            for name, hosted in self.view.remote_hosts(targets).items():
                self.cluster.publish_users(name, hosted, template)
        clients = self.hub.users_clients(users)
        if sender is not None:
            clients.update(self.hub.user_clients(sender.user))
        return self.hub.deliver(clients, template, exclude=sender)

    def route_all(self, template: PushTemplate, exclude: Client | None = None) -> int:
        if self.cluster is not None:
            self.cluster.publish_all(template)
        return self.route_all_local(template, exclude)

    # What arrives from other nodes is delivered here, and never forwarded again.

    def route_room_local(
        self,
        key: RoomKey,
        template: PushTemplate,
        *,
        exclude: Client | None = None,
        skip_user: str | None = None,
    ) -> int:
        delivered = 0
        for user, conns in list(self.hub.members(key).items()):
            if user != skip_user:
                delivered += self.hub.deliver(list(conns), template, exclude)
        return delivered

    def route_user_local(self, user: str, template: PushTemplate) -> int:
        return self.hub.deliver(list(self.hub.user_clients(user)), template)

    def route_all_local(self, template: PushTemplate, exclude: Client | None = None) -> int:
        return self.hub.deliver(list(self.hub.clients.values()), template, exclude)

    # Membership changes ---------------------------------------------------------------------------

    def join(self, client: Client, key: RoomKey) -> None:
        if self.hub.join(client, key):
            self._local(Joined(key[0], key[1], client.user))

    def leave(self, client: Client, key: RoomKey) -> None:
        if self.hub.leave(client, key):
            self._local(Left(key[0], key[1], client.user))

    def set_status(self, user: str, status: str, text: str | None) -> None:
        self._local(Status(user, status, text, time.time()))

    def _local(self, delta: Delta) -> None:
        """Apply a change of this node's presence: to the view, and to the cluster."""
        seq, effects = self.view.apply_local(delta)
        self.apply_effects(effects)
        if self.cluster is not None:
            self.cluster.local_delta(delta)
            self.cluster.publish_delta(seq, delta)

    def apply_effects(self, effects: list[Effect]) -> None:
        """Push what changed cluster-wide to the local clients concerned."""
        for effect in effects:
            if isinstance(effect, MemberJoined | MemberLeft):
                event = "room.joined" if isinstance(effect, MemberJoined) else "room.left"
                ns, room = effect.key
                member = {"ns": ns, "room": room, "user": effect.user}
                template = self._template(event, member, False)
                self.route_room_local(effect.key, template, skip_user=effect.user)
            elif isinstance(effect, StatusChanged):
                status = {"user": effect.user, "status": effect.status, "text": effect.text}
                template = self._template("status", status, False)
                clients = self.hub.rooms_clients(self.view.rooms_of(effect.user))
                clients.update(self.hub.user_clients(effect.user))
                self.hub.deliver(clients, template)

    # Running --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`shutdown`; ``task_status.started`` gets the bound port."""
        cfg = self.config
        listeners = await trio.open_tcp_listeners(cfg.node.port, host=cfg.node.host)
        self.port = listeners[0].socket.getsockname()[1]
        self.started_at = time.time()
        log.info("%s listening on %s:%s", self.name, cfg.node.host, self.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.flusher.run)  # first: the bus writes through it too
            if self.cluster is not None:
                await nursery.start(self.cluster.run)  # at most cluster.ready_timeout
            accept = trio.CancelScope()
            sweep = trio.CancelScope()
            nursery.start_soon(self._accept, listeners, nursery, accept)
            nursery.start_soon(self._sweep, sweep)
            task_status.started(self.port)
            await self._stop.wait()
            log.info("%s shutting down: closing %d connections", self.name, len(self._connected))
            accept.cancel()
            for client in list(self._connected):
                client.close(CloseCode.GOING_AWAY)
            with trio.move_on_after(cfg.shutdown.grace):
                if self._connected:
                    await self._idle.wait()
            sweep.cancel()
            if self.cluster is not None:
                await self.cluster.leave()
            nursery.cancel_scope.cancel()
        log.info("%s stopped", self.name)

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        nursery: trio.Nursery,
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(self._accept_one, listener, nursery)

    async def _accept_one(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept connections; each is served by one task of the node's nursery."""
        async with listener:
            while True:
                try:
                    accepted, _ = await listener.socket.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error("accept failed (%s); retrying in %.1f s", exc, ACCEPT_BACKOFF)
                    await trio.sleep(ACCEPT_BACKOFF)
                else:
                    sock = socket.socket(fileno=accepted.detach())
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    nursery.start_soon(self._serve_tcp, sock)

    async def _sweep(self, scope: trio.CancelScope) -> None:
        """The node-wide heartbeat: ping idle connections, close silent and stalled ones."""
        hb = self.config.heartbeat
        period = min(hb.interval, hb.timeout, self.config.limits.handshake_timeout) / 4
        period = min(1.0, max(0.01, period))
        with scope:
            while True:
                await trio.sleep(period)
                now = trio.current_time()
                for client in list(self._connected):
                    transport = client.outlet
                    assert isinstance(transport, Transport)
                    if not client.session.is_open:
                        if now > client.handshake_deadline:
                            transport.close(CloseCode.HANDSHAKE_TIMEOUT)
                    elif now - transport.last_seen > hb.timeout:
                        transport.close(CloseCode.HEARTBEAT_TIMEOUT, discard=True)
                    elif (
                        now - transport.last_seen > hb.interval
                        and transport.last_ping < transport.last_seen
                    ):
                        transport.ping(now)

    async def _serve_tcp(self, sock: socket.socket) -> None:
        """One TCP connection: plain HTTP, or a WebSocket for as long as it lives.

        Resource handling: the socket is closed before this returns (for a WebSocket, by the
        transport that took it over).
        """
        limits = self.config.limits
        deadline = trio.current_time() + limits.handshake_timeout
        try:
            upgrade = await self._handshake(sock, deadline)
        except Exception:  # a defect: it ends this connection, never the node
            log.exception("handshake failed; the connection is dropped")
            upgrade = None
        if upgrade is None:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            return
        trailing, identity = upgrade
        transport = Transport(
            sock,
            self.stats,
            self.flusher,
            trailing=trailing,
            max_message=limits.max_frame_bytes,
            max_bytes=limits.outbox_max_bytes,
            close_timeout=limits.close_timeout,
        )
        del upgrade, trailing  # nothing of the handshake stays with the connection
        client = Client(
            Session(identity.user),
            transport,
            RateLimiter(limits.rate, limits.burst, trio.current_time()),
            deadline,
            identity.claims,
        )
        del identity
        if self._stop.is_set():  # upgraded while the node began to shut down
            transport.close(CloseCode.GOING_AWAY)
        elif len(self._connected) >= limits.max_connections:
            self.stats.rejected["max_connections"] += 1
            transport.close(CloseCode.TRY_AGAIN_LATER)
        self.stats.connections_total += 1
        self._connected.add(client)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            await transport.run(self._dispatch.on_message, client, self._dispatch.on_control)
        except Exception:  # a defect: it ends this connection, never the node
            log.exception("connection %r failed; it is closed", client)
        finally:
            self._disconnected(client)

    async def _handshake(
        self, sock: socket.socket, deadline: float
    ) -> tuple[bytes, Identity] | None:
        """Answer plain HTTP, or accept a WebSocket upgrade: its trailing bytes and identity.

        Returns ``None`` when the connection is done (answered, refused or dropped).
        """
        reply: bytes | None = None
        with trio.move_on_at(deadline):
            try:
                request = await read_request(sock)
                if not request.upgrade:
                    reply = self._http(request)
                elif request.path not in ("/", "/ws"):
                    raise HandshakeError(404, f"no WebSocket endpoint at {request.path}")
                else:
                    check_upgrade(request)
                    identity = self._authenticate(request)
                    await send_all(sock, accept_response(request))
                    return request.trailing, identity
            except HandshakeError as exc:
                self.stats.rejected[str(exc.status)] += 1
                reply = exc.reply
            except BadRequest as exc:
                self.stats.rejected["400"] += 1
                reply = json_response(400, {"error": str(exc)})
            except OSError:
                return None
        if reply is not None:
            with trio.move_on_after(1.0), contextlib.suppress(OSError):
                await send_all(sock, reply)
        return None

    def _authenticate(self, request: HttpRequest) -> Identity:
        try:
            return self.authenticator.authenticate(request)
        except AuthError as exc:
            raise HandshakeError(
                401, str(exc), (("WWW-Authenticate", 'Bearer realm="roomd"'),)
            ) from None

    def _disconnected(self, client: Client) -> None:
        self._connected.discard(client)
        was_open = client.session.is_open
        client.session.close()
        remaining, left = self.hub.remove(client)
        for key in left:
            self._local(Left(key[0], key[1], client.user))
        if was_open:
            self._local(Online(client.user, remaining))
        for waiter in client.pending.values():
            waiter.event.set()
        if not self._connected:
            self._idle.set()

    # HTTP -----------------------------------------------------------------------------------------

    def _http(self, request: HttpRequest) -> bytes:
        self.stats.http_requests += 1
        if request.path == "/ws":
            return json_response(426, {"error": "WebSocket upgrade expected"})
        route = self._routes.get(request.path)
        if route is None:
            return json_response(404, {"error": f"not found: {request.path}"})
        if request.method not in ("GET", "HEAD"):
            return json_response(405, {"error": "method not allowed"}, (("Allow", "GET"),))
        return route(request)

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers."""
        health: dict[str, Any] = {
            "name": self.name,
            "status": "draining" if self._stop.is_set() else "ok",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "uptime": round(time.time() - self.started_at, 3),
            "connections": len(self._connected),
            "users": len(self.hub.users),
            "rooms": len(self.hub.rooms),
        }
        if self.cluster is not None:
            health["cluster"] = self.cluster_stats()
        return health

    def load(self) -> dict[str, Any]:
        """What this node tells the others about itself in its heartbeats."""
        host = self.config.node.host
        return {
            "status": "draining" if self._stop.is_set() else "up",
            "url": f"ws://{host}:{self.port}/ws",
            "connections": len(self._connected),
            "users": len(self.hub.users),
            "rooms": len(self.hub.rooms),
        }

    def cluster_stats(self, max_rooms: int = 1000) -> dict[str, Any]:
        """Nodes with status and load, users online, room member counts (cluster-wide)."""
        view = self.view
        rooms = sorted(view.room_users.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        stats: dict[str, Any] = (
            self.cluster.stats()
            if self.cluster is not None
            else {"mode": "none", "nodes": [{"name": self.name, **self.load(), "lastSeen": 0.0}]}
        )
        stats["usersOnline"] = view.online_count()
        stats["rooms"] = [
            {"ns": ns, "room": room, "members": len(users)}
            for (ns, room), users in rooms[:max_rooms]
        ]
        stats["roomsTruncated"] = len(rooms) > max_rooms
        return stats

    def _health_route(self, request: HttpRequest) -> bytes:
        return json_response(200, self.health(), (("Access-Control-Allow-Origin", "*"),))

    def _metrics_route(self, request: HttpRequest) -> bytes:
        body = generate_latest(self._registry)
        return response(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def _gauges(self) -> dict[str, float]:
        gauges = {
            "open_connections": len(self._connected),
            "users": len(self.hub.users),
            "rooms": len(self.hub.rooms),
            "uptime_seconds": time.time() - self.started_at,
        }
        if self.cluster is not None:
            gauges["cluster_nodes_up"] = len(self.view.nodes_up())
            gauges["cluster_users_online"] = self.view.online_count()
            gauges["bus_live"] = int(self.cluster.bus_live)
        return gauges

    def _counters(self) -> dict[str, tuple[str, float]]:
        if self.cluster is None:
            return {}
        bus, cluster = self.cluster.bus, self.cluster
        return {
            "bus_published": ("Messages published on the bus.", bus.published),
            "bus_received": ("Messages received from the bus.", bus.received),
            "bus_dropped": ("Messages the bus could not send.", bus.dropped),
            "bus_bad_messages": ("Bus messages that could not be handled.", cluster.bad_messages),
            "snapshots_requested": (
                "Presence snapshots asked of other nodes.",
                cluster.snapshots_requested,
            ),
        }

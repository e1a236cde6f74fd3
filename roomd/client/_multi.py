"""Several servers at once (the Gryt multi-server model).

A :class:`MultiServerClient` keeps one :class:`Client` per server, all connected (each with its
own heartbeat and backoff). One server is *active*: the one the application shows. Switching
changes only that, never the connections.

User state comes in two layers:

* **global** state (``nickname``, ``status`` ...) is the user's everywhere; :meth:`sync_state`
  changes it and pushes it to every server, queueing it for the servers that could not take it
  now: retried with backoff while the server stays online, and sent in full each time a server
  (re)connects;
* **local** state is per server (the room shown, a draft ...): :attr:`local_state` is the active
  server's, saved on switch-away and restored on switch-back.

Rooms are named per server: a :class:`RoomId` is ``(server, ns, room)``, so the same room name on
two servers never collides in client state.
"""

from __future__ import annotations

import enum
import logging
import random as _random
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import attrs
import trio

from ..protocol import AckError, Push, RequestTimeout
from ._backoff import Backoff, RandomSource
from ._client import DEFAULT_CONNECT_TIMEOUT, Client, ClientState, TokenSource
from ._core import ANY_PUSH, Closed, GaveUp, Lifecycle, Opened, Reconnecting, RttSample
from ._errors import ClientClosed, ConnectFailed, InvalidServer, OfflineQueueFull
from ._health import DEFAULT_HEALTH_TIMEOUT, Health, fetch_health
from ._subscription import (
    DEFAULT_SUBSCRIPTION_SIZE,
    Handler,
    Overflow,
    Subscription,
    Subscriptions,
    run_handler,
)
from ._util import collapse_single

log = logging.getLogger("roomd.client.multi")

DEFAULT_HEALTH_INTERVAL: Final = 30.0
DEFAULT_SYNC_TIMEOUT: Final = 5.0
DEFAULT_SYNC_BACKOFF: Final = Backoff(base=1.0, max_delay=30.0)  # retries on an online server
STATUS_FIELDS: Final = ("status", "status_text")  # carried by the built-in ``status`` event


class ServerStatus(enum.Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # disconnected, reconnecting
    ERROR = "error"  # stopped for good (terminal close code, gave up)


class MultiEvent:
    """Names of the multi-server client's own events (pushes keep their names)."""

    ADDED: Final = "$server.added"  # -> ServerInfo
    REMOVED: Final = "$server.removed"  # -> ServerInfo
    CHANGED: Final = "$server.changed"  # -> ServerChanged
    SWITCHED: Final = "$server.switched"  # -> Switched
    SYNCED: Final = "$sync.applied"  # -> SyncApplied


@attrs.frozen
class ServerInfo:
    """A snapshot of one server as the client sees it."""

    id: str
    url: str
    name: str  # the node's name from /health
    version: str
    status: ServerStatus
    users: int | None  # users online on the node, from /health
    latency: float | None  # smoothed heartbeat round trip, seconds
    last_error: str | None
    active: bool


@attrs.frozen
class ServerChanged:
    info: ServerInfo
    changed: frozenset[str]  # the ServerInfo fields that changed


@attrs.frozen
class Switched:
    previous: str | None
    current: str


@attrs.frozen
class SyncApplied:
    server: str
    fields: dict[str, Any]


SyncResult = Literal["applied", "queued", "refused", "failed", "local"]


@attrs.frozen
class SyncOutcome:
    """What :meth:`MultiServerClient.sync_state` achieved on one server.

    * ``applied``: the server took every field that travels (``local`` lists those that do not);
    * ``queued``: not taken yet (offline, or no answer in time): the fields stay pending
      (:meth:`MultiServerClient.pending_sync`), retried with backoff while the server is online
      and sent in full when it reconnects;
    * ``refused``: the server answered with an error (not retried);
    * ``failed``: the server is stopped for good (``error`` status): nothing will be sent;
    * ``local``: none of the fields travels (no ``state_event`` configured): client-side only.
    """

    server: str
    result: SyncResult
    error: str | None = None
    local: tuple[str, ...] = ()  # fields kept client-side (no state_event to carry them)


@attrs.frozen
class RoomId:
    """A room on one server."""

    server: str
    ns: str
    room: str


@attrs.frozen
class ServerPush:
    """A push from one of the servers."""

    server: str
    push: Push

    @property
    def room_id(self) -> RoomId | None:
        room = self.push.room
        return RoomId(self.server, room.ns, room.room) if room is not None else None


class _Server:
    """One server's entry: its client and what the multi-server client knows of it."""

    def __init__(self, server_id: str, url: str, health: Health, client: Client) -> None:
        self.id = server_id
        self.url = url
        self.health = health
        self.client = client
        self.status = ServerStatus.CONNECTING
        self.users: int | None = health.users
        self.latency: float | None = None
        self.last_error: str | None = None
        self.saved: dict[str, Any] = {}  # local state, while another server is active
        self.pending: dict[str, Any] = {}  # synced fields this server has not taken yet
        self.retry = trio.Event()  # set when pending fields should be retried (server online)
        self.scope = trio.CancelScope()  # its health poller and sync retrier


def default_server_id(url: str) -> str:
    """``host:port`` of a URL (the default server id)."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    port = parts.port or (443 if secure else 80)
    return f"{parts.hostname}:{port}"


class MultiServerClient:
    """Connections to several roomd servers, one of them active.

    Run it with ``await nursery.start(multi.run)`` or use :func:`open_multi_client`.

    Resource handling: :meth:`run` owns every server's client and health poller; :meth:`aclose`
    closes them all. ``client_options`` are passed to each :class:`Client` (backoff, heartbeat,
    queue sizes ...).

    Error handling: :meth:`add_server` raises :class:`InvalidServer` for a URL that is not a
    reachable roomd node of a supported protocol version, and :class:`ConnectFailed` when the
    node refuses the connection for good (bad credentials ...) or no connection opens within
    ``connect_timeout``. Calls raise what :meth:`Client.call` raises; naming an unknown server
    raises ``KeyError``.
    """

    def __init__(
        self,
        *,
        user: str | None = None,
        token: TokenSource | None = None,
        params: Mapping[str, str] | None = None,
        client_options: Mapping[str, Any] | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        validate_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        sync_backoff: Backoff = DEFAULT_SYNC_BACKOFF,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        state_event: str | None = None,
        random: RandomSource | None = None,
    ) -> None:
        self.user = user
        self.token = token
        self.params = dict(params or {})
        self.client_options = dict(client_options or {})
        self.health_interval = health_interval
        self.validate_timeout = validate_timeout
        self.sync_timeout = sync_timeout
        self.sync_backoff = sync_backoff
        self.connect_timeout = connect_timeout  # add_server: the wait for the first connection
        self._random: RandomSource = random if random is not None else _random.Random().random
        self.state_event = state_event  # app event carrying non-status fields, if any
        self.global_state: dict[str, Any] = {}
        self._synced: dict[str, Any] = {}  # the global fields every server should have
        self._local: dict[str, Any] = {}
        self._servers: dict[str, _Server] = {}
        self._active: str | None = None
        self._events = Subscriptions()
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._done = trio.Event()

    # Servers ------------------------------------------------------------------------------------

    async def add_server(
        self,
        url: str,
        *,
        server_id: str | None = None,
        user: str | None = None,
        token: TokenSource | None = None,
        params: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ServerInfo:
        """Validate ``url`` (``GET /health``, protocol version) and connect to it.

        With ``wait`` (default) it returns once connected, within ``validate_timeout`` plus
        ``connect_timeout``; the first server added becomes the active one. ``user``, ``token``
        and ``params`` default to the multi-client's.

        Error handling: :class:`InvalidServer` (not a usable roomd node), :class:`ConnectFailed`
        (refused for good, or no WebSocket connection within ``connect_timeout``: the server is
        not added).
        """
        if self._nursery is None:
            raise RuntimeError("the MultiServerClient is not running")
        sid = server_id or default_server_id(url)
        if sid in self._servers:
            raise ValueError(f"server {sid!r} is already added")
        health = await fetch_health(url, timeout=self.validate_timeout)
        if health.status != "ok":
            raise InvalidServer(url, f"the node is {health.status}")
        client = Client(
            url,
            user=user if user is not None else self.user,
            token=token if token is not None else self.token,
            params={**self.params, **(params or {})},
            wait=wait,
            **self.client_options,
        )
        server = _Server(sid, url, health, client)
        self._watch(server)
        self._servers[sid] = server
        try:
            with trio.move_on_after(self.connect_timeout) as bound:
                await self._nursery.start(client.run)
        except BaseException:
            self._servers.pop(sid, None)
            raise
        if bound.cancelled_caught:  # the client was cancelled with it, before it ever opened
            self._servers.pop(sid, None)
            last = f"{client.close_code or ''} {client.close_reason}".strip() or "none"
            raise ConnectFailed(
                f"{url}: GET /health answered, but no WebSocket connection opened within "
                f"{self.connect_timeout:g} s (last attempt: {last})",
                client.close_code,
                client.close_reason,
            )
        self._nursery.start_soon(self._maintain, server)
        self._events.publish(MultiEvent.ADDED, self._info(server))
        if self._active is None:
            self.switch(sid)
        return self._info(server)

    async def remove_server(self, server_id: str) -> None:
        """Disconnect from a server and forget it (and its saved local state)."""
        server = self._servers.pop(server_id)
        server.scope.cancel()
        await server.client.aclose()
        if self._active == server_id:
            self._active = None
            self._local = {}
        self._events.publish(MultiEvent.REMOVED, self._info(server))

    def switch(self, server_id: str) -> None:
        """Make ``server_id`` the active server; every connection stays as it is."""
        server = self._servers[server_id]
        previous = self._active
        if previous == server_id:
            return
        if previous is not None and previous in self._servers:
            self._servers[previous].saved = self._local
        self._local = server.saved
        server.saved = {}
        self._active = server_id
        self._events.publish(MultiEvent.SWITCHED, Switched(previous, server_id))
        for sid in (previous, server_id):
            if sid is not None and sid in self._servers:
                info = self._info(self._servers[sid])
                self._events.publish(MultiEvent.CHANGED, ServerChanged(info, frozenset({"active"})))

    @property
    def active(self) -> str | None:
        return self._active

    @property
    def servers(self) -> list[ServerInfo]:
        return [self._info(s) for s in self._servers.values()]

    def server(self, server_id: str) -> ServerInfo:
        return self._info(self._servers[server_id])

    def client(self, server_id: str | None = None) -> Client:
        """The client of ``server_id`` (default: the active server)."""
        sid = server_id if server_id is not None else self._active
        if sid is None:
            raise KeyError("no active server")
        return self._servers[sid].client

    def _info(self, server: _Server) -> ServerInfo:
        return ServerInfo(
            id=server.id,
            url=server.url,
            name=server.health.name,
            version=server.health.version,
            status=server.status,
            users=server.users,
            latency=server.latency,
            last_error=server.last_error,
            active=server.id == self._active,
        )

    def _update(self, server: _Server, **fields: Any) -> None:
        changed = frozenset(k for k, v in fields.items() if getattr(server, k) != v)
        if not changed:
            return
        for key in changed:
            setattr(server, key, fields[key])
        if server.id in self._servers:
            self._events.publish(MultiEvent.CHANGED, ServerChanged(self._info(server), changed))

    # Watching each server -------------------------------------------------------------------------

    def _watch(self, server: _Server) -> None:
        """React to the server's client events (handlers run in that client's tasks)."""
        client = server.client

        async def opened(_: Opened) -> None:
            self._update(server, status=ServerStatus.ONLINE)
            await self._apply_synced(server)
            await self._refresh_health(server)

        def closed(event: Closed) -> None:
            error = f"{event.code} {event.reason}".strip()
            status = ServerStatus.OFFLINE if event.reconnect else ServerStatus.ERROR
            self._update(server, status=status, last_error=error)

        def reconnecting(_: Reconnecting) -> None:
            self._update(server, status=ServerStatus.CONNECTING)

        def gave_up(event: GaveUp) -> None:
            self._update(server, status=ServerStatus.ERROR)

        def rtt(sample: RttSample) -> None:
            self._update(server, latency=sample.smoothed)

        def push(frame: Push) -> None:
            item = ServerPush(server.id, frame)
            self._events.publish(frame.event, item)
            self._events.publish(ANY_PUSH, item)

        client.on(Lifecycle.OPEN, opened)
        client.on(Lifecycle.CLOSE, closed)
        client.on(Lifecycle.RECONNECTING, reconnecting)
        client.on(Lifecycle.GAVE_UP, gave_up)
        client.on(Lifecycle.RTT, rtt)
        client.on(ANY_PUSH, push, size=1024)

    async def _maintain(self, server: _Server) -> None:
        """The server's own tasks, until it is removed: health polls and sync retries."""
        with server.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._poll_health, server)
                nursery.start_soon(self._retry_sync, server)

    async def _poll_health(self, server: _Server) -> None:
        while True:
            await trio.sleep(self.health_interval)
            await self._refresh_health(server)

    async def _refresh_health(self, server: _Server) -> None:
        try:
            health = await fetch_health(server.url, timeout=self.validate_timeout)
        except InvalidServer as exc:
            log.debug("%s: health: %s", server.id, exc)
            return
        server.health = health
        self._update(server, users=health.users)

    # User state ---------------------------------------------------------------------------------

    @property
    def local_state(self) -> dict[str, Any]:
        """The active server's local state (a dict to read and write; saved on switch-away)."""
        return self._local

    @property
    def state(self) -> dict[str, Any]:
        """Global state overlaid with the active server's local state."""
        return {**self.global_state, **self._local}

    def saved_state(self, server_id: str) -> dict[str, Any]:
        """The local state saved for a server that is not active."""
        if server_id == self._active:
            return self._local
        return self._servers[server_id].saved

    async def sync_state(self, **fields: Any) -> dict[str, SyncOutcome]:
        """Change global state and push it to every server; per-server outcomes.

        ``status`` and ``status_text`` travel as the built-in ``status`` event; other fields as
        ``state_event`` if one is configured, else they stay client-side (outcome ``local``, or
        listed in ``SyncOutcome.local``). A server that cannot take the change now keeps it
        pending (``queued``): retried with ``sync_backoff`` while the server is online, sent in
        full when it reconnects. A server stopped for good gets nothing (``failed``).
        """
        self.global_state.update(fields)
        self._synced.update(fields)
        sent = self._travelling(fields)
        local = tuple(k for k in fields if k not in sent)
        outcomes: dict[str, SyncOutcome] = {}

        async def apply(server: _Server) -> None:
            if not sent:
                outcomes[server.id] = SyncOutcome(server.id, "local", local=local)
                return
            server.pending.update(sent)
            outcome = await self._apply(server, dict(server.pending))
            outcomes[server.id] = attrs.evolve(outcome, local=local)

        async with trio.open_nursery() as nursery:
            for server in list(self._servers.values()):
                nursery.start_soon(apply, server)
        return outcomes

    def pending_sync(self, server_id: str) -> dict[str, Any]:
        """The synced fields a server has not taken yet (its retry queue)."""
        return dict(self._servers[server_id].pending)

    def _travelling(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The fields that are sent to servers (the others stay client-side)."""
        return {
            k: v for k, v in fields.items() if k in STATUS_FIELDS or self.state_event is not None
        }

    @staticmethod
    def _stopped(server: _Server) -> bool:
        return server.status is ServerStatus.ERROR or server.client.state is ClientState.CLOSED

    async def _apply_synced(self, server: _Server) -> None:
        """On (re)connect: a new session knows nothing of the synced state; give all of it."""
        fields = self._travelling(self._synced)
        if not fields:
            return
        server.pending.update(fields)
        outcome = await self._apply(server, fields)
        if outcome.result == "applied":
            self._events.publish(MultiEvent.SYNCED, SyncApplied(server.id, fields))

    async def _retry_sync(self, server: _Server) -> None:
        """Retry the pending fields with backoff while the server is online; a reconnect sends
        them anyway (:meth:`_apply_synced`), so an offline server is left to it."""
        attempt = 0
        while True:
            await server.retry.wait()
            server.retry = trio.Event()
            attempt += 1
            await trio.sleep(self.sync_backoff.delay(attempt, self._random))
            if not server.pending or server.client.state is not ClientState.OPEN:
                attempt = 0
                continue
            fields = dict(server.pending)
            outcome = await self._apply(server, fields)
            if not server.retry.is_set():  # else _apply asked for another round, later
                attempt = 0
            if outcome.result == "applied":
                self._events.publish(MultiEvent.SYNCED, SyncApplied(server.id, fields))

    async def _apply(self, server: _Server, fields: dict[str, Any]) -> SyncOutcome:
        client = server.client
        if self._stopped(server):
            server.pending.clear()
            return SyncOutcome(server.id, "failed", f"server stopped: {server.last_error}")
        if client.state is not ClientState.OPEN:
            return SyncOutcome(server.id, "queued", f"server is {server.status.value}")
        try:
            if any(k in fields for k in STATUS_FIELDS):
                data = {
                    "status": self._synced.get("status", "online"),
                    "text": self._synced.get("status_text"),
                }
                await client.call("status", data, timeout=self.sync_timeout)
            rest = {k: v for k, v in fields.items() if k not in STATUS_FIELDS}
            if rest and self.state_event is not None:
                await client.call(self.state_event, rest, timeout=self.sync_timeout)
        except AckError as exc:
            self._forget(server, fields)
            self._update(server, last_error=f"sync refused: {exc.code}: {exc.message}")
            return SyncOutcome(server.id, "refused", f"{exc.code}: {exc.message}")
        except ClientClosed as exc:
            server.pending.clear()
            return SyncOutcome(server.id, "failed", str(exc))
        except (RequestTimeout, OfflineQueueFull) as exc:
            if client.state is ClientState.OPEN:
                server.retry.set()
            return SyncOutcome(server.id, "queued", str(exc))
        self._forget(server, fields)
        return SyncOutcome(server.id, "applied")

    @staticmethod
    def _forget(server: _Server, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key in server.pending and server.pending[key] == value:
                del server.pending[key]

    # Rooms and events -----------------------------------------------------------------------------

    async def join(self, room: str, ns: str = "/", *, server: str | None = None) -> RoomId:
        sid = server if server is not None else self._active
        await self.client(sid).join(room, ns)
        assert sid is not None
        return RoomId(sid, ns, room)

    async def leave(self, room: RoomId) -> None:
        await self.client(room.server).leave(room.room, room.ns)

    @property
    def rooms(self) -> list[RoomId]:
        """Every room joined, on every server."""
        return [
            RoomId(sid, ns, room)
            for sid, server in self._servers.items()
            for ns, room in server.client.rooms
        ]

    async def call(
        self,
        event: str,
        data: Any = None,
        *,
        server: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        return await self.client(server).call(event, data, timeout=timeout)

    async def emit(self, event: str, data: Any = None, *, server: str | None = None) -> None:
        await self.client(server).emit(event, data)

    def subscribe(
        self,
        event: str,
        *,
        size: int = DEFAULT_SUBSCRIPTION_SIZE,
        overflow: Overflow = "drop_oldest",
    ) -> Subscription:
        """Pushes from every server (as :class:`ServerPush`) or a :class:`MultiEvent`."""
        return self._events.subscribe(event, size, overflow)

    def on(self, event: str, handler: Handler) -> Subscription:
        """Call ``handler(item)`` for each ``event`` in a task of the multi-server client."""
        if self._nursery is None:
            raise RuntimeError("the MultiServerClient is not running")
        sub = self.subscribe(event)
        self._nursery.start_soon(run_handler, sub, handler)
        return sub

    # Running ------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the servers' connections until :meth:`aclose`."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._stop.wait()
                async with trio.open_nursery() as closing:
                    for server in list(self._servers.values()):
                        server.scope.cancel()
                        closing.start_soon(server.client.aclose)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._events.close()
            self._done.set()

    async def aclose(self) -> None:
        """Close every connection and make :meth:`run` return."""
        self._stop.set()
        await self._done.wait()


@asynccontextmanager
async def open_multi_client(**options: Any) -> AsyncIterator[MultiServerClient]:
    """A running :class:`MultiServerClient` (options as its constructor's), closed at the end."""
    multi = MultiServerClient(**options)
    with collapse_single():
        async with trio.open_nursery() as nursery:
            await nursery.start(multi.run)
            try:
                yield multi
            finally:
                with trio.CancelScope(shield=True):
                    await multi.aclose()

"""A node's membership in a cluster: the bus, heartbeats, presence sync, routing, calls.

Resource handling: :meth:`Cluster.run` owns the bus and every task of the cluster layer (the
ticker and the handlers of incoming calls); the node starts it in its own nursery.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ..protocol import PushTemplate
from . import _wire
from ._bus import Bus
from ._view import ClusterView, Delta, Effect, Joined, Left, delta_from_wire, delta_to_wire
from ._wire import Envelope, Kind

if TYPE_CHECKING:
    from .._config import ClusterSection
    from .._node import Node

log = logging.getLogger("roomd.cluster")

MAX_CONCURRENT_CALLS: Final = 256
MAX_GONE_NODES: Final = 100  # nodes that went down or left, listed in the stats until they return
BYE_FLUSH: Final = 0.05  # seconds for libzmq's I/O thread to send the goodbye
# Presence changes within this many seconds travel as one bus message: a thousand connections
# opened in a second cost a hundred messages, not a thousand (each of which every node decodes).
DELTA_WINDOW: Final = 0.01

CallHandler = Callable[[Any, str], Awaitable[Any]]


@attrs.frozen
class Reply:
    """One node's answer to a cluster call."""

    node: str
    ok: bool
    result: Any = None  # the handler's return value, or {"code", "message"} if not ok


@attrs.define
class ClusterReplies:
    """The outcome of :meth:`Node.cluster_call`."""

    replies: dict[str, Any] = attrs.field(factory=dict)  # node -> result
    errors: dict[str, dict[str, str]] = attrs.field(factory=dict)  # node -> {code, message}
    missing: list[str] = attrs.field(factory=list)  # nodes that did not answer in time


class _PendingCall:
    __slots__ = ("remaining", "send")

    def __init__(self, send: trio.MemorySendChannel[Reply], remaining: set[str]) -> None:
        self.send = send
        self.remaining = remaining


class Cluster:
    """The cluster layer of one node."""

    def __init__(self, node: Node, section: ClusterSection, peers: tuple[str, ...]) -> None:
        self.node = node
        self.view: ClusterView = node.view
        self.name = node.name
        self.epoch = node.epoch
        self.section = section
        self.timeout = section.heartbeat_interval * section.heartbeat_misses
        self.bus = Bus(
            node.name,
            flusher=node.flusher,
            mode=section.mode,
            on_batch=self._on_batch,
            frontend=section.broker_frontend,
            backend=section.broker_backend,
            bind=section.bus,
            peers=peers,
        )
        self.handlers: dict[str, CallHandler] = {}
        self._seq = 0
        self._calls: dict[int, _PendingCall] = {}
        self._call_ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._call_slots = trio.Semaphore(MAX_CONCURRENT_CALLS)
        self._own_marker = _wire.origin_marker(self.name)
        self._view_settled = trio.Event()  # a snapshot arrived or a node expired
        self._ticking = trio.CancelScope()  # the heartbeat ticker's
        self._deltas: list[list[Any]] = []
        self._deltas_due = trio.Event()
        self._deltas_first = 0
        self._published_seq = 0  # the last delta sequence number on the bus
        self._echo_at = -math.inf  # when this node last heard its own heartbeat from the bus
        self.bus_live = False  # our own heartbeats come back: publishing and subscriptions work
        self._gone: dict[str, tuple[str, float]] = {}  # node -> ("down" | "left", wall time)
        self.bad_messages = 0
        self.snapshots_requested = 0

    # Running -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster. Started once the bus is live and the view holds the state of every
        node heard from (so that the first clients see the whole cluster), or at the latest
        ``ready_timeout`` seconds after it began: then the node serves its own clients while the
        bus goes on trying in the background."""
        deadline = trio.current_time() + self.section.ready_timeout
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.bus.run)
            with trio.move_on_at(deadline):
                await self.bus.wait_ready()
            self._heartbeat()
            nursery.start_soon(self._ticker)
            nursery.start_soon(self._delta_publisher)
            if not self.bus.ready:
                log.warning(
                    "%s: bus not ready after %.0f s (%s mode); serving anyway",
                    self.name,
                    self.section.ready_timeout,
                    self.bus.mode,
                )
            else:
                await self._sync_view(deadline)
                up = len(self.view.nodes_up()) - 1
                log.info(
                    "%s: cluster ready (%s mode, epoch %d, %d other nodes)",
                    self.name,
                    self.bus.mode,
                    self.epoch,
                    up,
                )
            task_status.started()

    async def _sync_view(self, deadline: float) -> None:
        """Listen for one and a half heartbeat intervals, then until every node heard from
        has sent its snapshot or is gone (at the latest until ``deadline``)."""
        with trio.move_on_at(deadline):
            await trio.sleep(self.section.heartbeat_interval * 1.5)
            while any(n.syncing for n in self.view.nodes.values()):
                self._view_settled = trio.Event()
                await self._view_settled.wait()

    async def leave(self) -> None:
        """Tell the other nodes this one is leaving, and give the message time to go out."""
        self._ticking.cancel()  # no heartbeat after the goodbye: it would announce us again
        self._publish(_wire.CONTROL, Kind.BYE, None)
        with trio.CancelScope(shield=True):
            await trio.sleep(BYE_FLUSH)

    async def _ticker(self) -> None:
        with self._ticking:
            while True:
                await self._tick()

    async def _tick(self) -> None:
        """Every heartbeat interval: publish ours, expire silent nodes, check the bus."""
        await trio.sleep(self.section.heartbeat_interval)
        self._heartbeat()
        now = trio.current_time()
        dead, effects = self.view.expire(now, self.timeout)
        for name in dead:
            log.warning(
                "%s: node %s is down (no heartbeat for %.1f s)", self.name, name, self.timeout
            )
            self._forget(name, "down")
        if dead:
            self._view_settled.set()
        self._check_bus(now)
        self.node.apply_effects(effects)
        for name in self.view.resync_due(now, self.section.snapshot_retry):
            self._ask_snapshot(name)

    def _check_bus(self, now: float) -> None:
        """The bus is live while this node's own heartbeats come back through it."""
        live = now - self._echo_at <= self.timeout
        if live != self.bus_live:
            self.bus_live = live
            if live:
                log.info("%s: bus is live (its own heartbeats come back)", self.name)
            else:
                log.warning(
                    "%s: bus is down (none of its own heartbeats came back for %.1f s)",
                    self.name,
                    self.timeout,
                )

    def _forget(self, name: str, why: str) -> None:
        self._gone[name] = (why, time.time())
        if len(self._gone) > MAX_GONE_NODES:
            oldest = min(self._gone, key=lambda n: self._gone[n][1])
            del self._gone[oldest]

    def _heartbeat(self) -> None:
        info = self.node.load()
        self._publish(_wire.CONTROL, Kind.HEARTBEAT, [self._published_seq, info])

    # Publishing ----------------------------------------------------------------------------------

    def _publish(self, topic: bytes, kind: str, body: Any) -> None:
        self._seq += 1
        self.bus.publish(_wire.encode(topic, kind, self.name, self.epoch, self._seq, body))

    def publish_delta(self, seq: int, delta: Delta) -> None:
        """Queue a presence delta; those of a ``DELTA_WINDOW`` travel as one message."""
        if not self._deltas:
            self._deltas_first = seq
            self._deltas_due.set()
        self._deltas.append(delta_to_wire(delta))

    async def _delta_publisher(self) -> None:
        while True:
            await self._deltas_due.wait()
            await trio.sleep(DELTA_WINDOW)
            self._deltas_due = trio.Event()
            self._flush_deltas()

    def _flush_deltas(self) -> None:
        if self._deltas:
            deltas, self._deltas = self._deltas, []
            self._publish(_wire.CONTROL, Kind.DELTAS, [self._deltas_first, deltas])
            self._published_seq = self._deltas_first + len(deltas) - 1

    def publish_room(
        self, key: tuple[str, str], template: PushTemplate, skip_user: str | None
    ) -> None:
        body = [template.body, template.volatile, skip_user]
        self._publish(_wire.room_topic(*key), Kind.ROOM, body)

    def publish_users(self, node: str, users: list[str], template: PushTemplate) -> None:
        """A push for ``users``, who are connected to ``node``."""
        body = [template.body, template.volatile, users]
        self._publish(_wire.node_topic(node), Kind.USERS, body)

    def publish_all(self, template: PushTemplate) -> None:
        self._publish(_wire.ALL, Kind.ALL, [template.body, template.volatile])

    # Interest ------------------------------------------------------------------------------------

    def local_delta(self, delta: Delta) -> None:
        """Follow this node's rooms with subscriptions (routing by interest)."""
        if isinstance(delta, Joined):
            self.bus.subscribe(_wire.room_topic(delta.ns, delta.room))
        elif isinstance(delta, Left):
            self.bus.unsubscribe(_wire.room_topic(delta.ns, delta.room))

    # Receiving -----------------------------------------------------------------------------------

    def _on_batch(self, batch: list[bytes]) -> None:
        now = trio.current_time()
        own = self._own_marker
        for message in batch:
            try:
                if _wire.is_from(message, own):
                    self._own(message)
                else:
                    self._dispatch(_wire.decode(message), now)
            except Exception:
                self.bad_messages += 1
                log.exception("%s: bad bus message %r", self.name, message[:80])

    def _own(self, message: bytes) -> None:
        """One of this node's messages, back from the bus: only heartbeats matter (they tell
        that the bus is live, or that another node uses this name)."""
        if _wire.CONTROL in message[:2]:
            envelope = _wire.decode(message)
            if envelope.kind != Kind.HEARTBEAT:
                return
            if envelope.epoch != self.epoch:
                log.error("%s: another node uses the name %s", self.name, self.name)
                return
            self._echo_at = trio.current_time()
            if not self.bus_live:
                self._check_bus(self._echo_at)

    def _dispatch(self, env: Envelope, now: float) -> None:
        node = self.node
        kind, body = env.kind, env.body
        if kind == Kind.ROOM:
            template = PushTemplate(body[0], volatile=body[1])
            node.route_room_local(env.room_key(), template, skip_user=body[2])
        elif kind == Kind.USERS:
            template = PushTemplate(body[0], volatile=body[1])
            for user in body[2]:
                node.route_user_local(user, template)
        elif kind == Kind.ALL:
            node.route_all_local(PushTemplate(body[0], volatile=body[1]))
        elif kind == Kind.DELTAS:
            self._track(env.node)
            first, deltas = body
            asked, effects = False, list[Effect]()
            for i, wire in enumerate(deltas):
                wants, more = self.view.delta(
                    env.node, env.epoch, first + i, delta_from_wire(wire), now
                )
                asked = asked or wants
                effects.extend(more)
            self._after(env.node, asked, effects)
        elif kind == Kind.HEARTBEAT:
            self._track(env.node)
            wants, effects = self.view.heartbeat(env.node, env.epoch, body[0], now, body[1])
            self._after(env.node, wants, effects)
        elif kind == Kind.SNAPSHOT_REQUEST:
            own = self.view.own
            self._publish(_wire.node_topic(body), Kind.SNAPSHOT, [own.seq, own.snapshot()])
        elif kind == Kind.SNAPSHOT:
            self.node.apply_effects(self.view.snapshot(env.node, env.epoch, body[0], body[1], now))
            self._view_settled.set()
        elif kind == Kind.BYE:
            if env.node in self.view.nodes:
                log.info("%s: node %s left", self.name, env.node)
                self._forget(env.node, "left")
            self.node.apply_effects(self.view.bye(env.node))
        elif kind == Kind.CALL:
            self._on_call(env)
        elif kind == Kind.REPLY:
            self._on_reply(env)

    def _track(self, name: str) -> None:
        if name not in self.view.nodes:
            log.info("%s: node %s is up", self.name, name)
            self._gone.pop(name, None)

    def _after(self, name: str, wants_snapshot: bool, effects: list[Any]) -> None:
        if wants_snapshot:
            self._ask_snapshot(name)
        self.node.apply_effects(effects)

    def _ask_snapshot(self, name: str) -> None:
        self.snapshots_requested += 1
        log.debug("%s: asking %s for a snapshot", self.name, name)
        self._publish(_wire.node_topic(name), Kind.SNAPSHOT_REQUEST, self.name)

    # Calls ---------------------------------------------------------------------------------------

    def start_call(
        self,
        event: str,
        data: Any,
        targets: list[str],
        send: trio.MemorySendChannel[Reply],
    ) -> int:
        """Publish a call to ``targets`` (remote nodes); replies go to ``send``."""
        call_id = next(self._call_ids)
        self._calls[call_id] = _PendingCall(send, set(targets))
        body = [call_id, event, data]
        if len(targets) == 1:
            self._publish(_wire.node_topic(targets[0]), Kind.CALL, [*body, targets])
        else:
            self._publish(_wire.CONTROL, Kind.CALL, [*body, targets])
        return call_id

    def end_call(self, call_id: int) -> None:
        self._calls.pop(call_id, None)

    def _on_call(self, env: Envelope) -> None:
        call_id, event, data, targets = env.body
        if self.name not in targets or self._nursery is None:
            return
        self._nursery.start_soon(self._answer, env.node, call_id, event, data)

    async def _answer(self, origin: str, call_id: int, event: str, data: Any) -> None:
        handler = self.handlers.get(event)
        if handler is None:
            body = [
                call_id,
                False,
                {"code": "unknown_event", "message": f"no handler for {event!r}"},
            ]
        elif self._call_slots.value == 0:
            body = [call_id, False, {"code": "busy", "message": "too many calls in progress"}]
        else:
            async with self._call_slots:
                try:
                    result = await handler(data, origin)
                    body = [call_id, True, result]
                except Exception as exc:
                    code = getattr(exc, "code", "internal")
                    message = getattr(exc, "message", "internal error")
                    if code == "internal":
                        log.exception("%s: cluster handler %r failed", self.name, event)
                    body = [call_id, False, {"code": code, "message": message}]
        try:
            self._publish(_wire.node_topic(origin), Kind.REPLY, body)
        except TypeError:
            log.error("%s: cluster handler %r returned data with no msgpack form", self.name, event)
            error = {"code": "internal", "message": "internal error"}
            self._publish(_wire.node_topic(origin), Kind.REPLY, [call_id, False, error])

    def _on_reply(self, env: Envelope) -> None:
        call_id, ok, result = env.body
        pending = self._calls.get(call_id)
        if pending is None or env.node not in pending.remaining:
            return
        pending.remaining.discard(env.node)
        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
            pending.send.send_nowait(Reply(env.node, ok, result))

    # Stats ---------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = trio.current_time()
        nodes = []
        for state in sorted(self.view.nodes.values(), key=lambda n: n.name):
            own = state.name == self.name
            info = self.node.load() if own else state.info
            age = 0.0 if own else now - state.last_seen
            nodes.append(
                {
                    "name": state.name,
                    "status": info.get("status", "up"),
                    "lastSeen": round(age, 3) if math.isfinite(age) else None,
                    **{k: v for k, v in info.items() if k != "status"},
                }
            )
        for name, (why, since) in sorted(self._gone.items()):
            if name not in self.view.nodes:
                nodes.append({"name": name, "status": why, "since": round(since, 3)})
        return {
            "mode": self.bus.mode,
            "nodes": nodes,
            "bus": {
                "live": self.bus_live,
                "published": self.bus.published,
                "received": self.bus.received,
                "dropped": self.bus.dropped,
                "badMessages": self.bad_messages,
                "snapshotsRequested": self.snapshots_requested,
            },
        }

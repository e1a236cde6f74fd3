"""A node's membership in a cluster: the bus, heartbeats, presence sync, routing, calls.

Resource handling: :meth:`Cluster.run` owns the bus and every task of the cluster layer (the
ticker, the delta publisher and the handlers of incoming calls); the node starts it in its own
nursery.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Protocol

import attrs
import trio

from .._config import ClusterSection
from ..io import Flusher, until_next
from ..protocol import ErrorCode, PushTemplate, RequestTimeout, RoomdError
from . import _wire
from ._calls import Calls, Reply, error_body, run_handler
from ._host import ClusterHost
from ._setup import make_bus
from ._streaming import (
    COPY,
    READ,
    TAIL,
    TAILS,
    Outbound,
    StreamService,
    entry_from_wire,
    entry_to_wire,
)
from ._streams import (
    Entry,
    Gap,
    HistoryLimits,
    Position,
    StreamKey,
    StreamStore,
    ranking,
    room_of,
    user_of,
    user_stream,
)
from ._view import (
    ClusterView,
    Delta,
    Effect,
    Joined,
    Left,
    Online,
    RoomKey,
    delta_from_wire,
    delta_to_wire,
)
from ._wire import Envelope, Kind

log = logging.getLogger("roomd.cluster")

MAX_CONCURRENT_CALLS: Final = 256
MAX_GONE_NODES: Final = 100  # nodes that went down or left, listed in the stats until they return
BYE_FLUSH: Final = 0.05  # seconds for libzmq's I/O thread to send the goodbye
# Presence changes within this many seconds travel as one bus message: a thousand connections
# opened in a second cost a hundred messages, not a thousand (each of which every node decodes).
DELTA_WINDOW: Final = 0.01
MAX_RANKINGS: Final = 100_000  # streams whose node ranking is remembered
HANDLING_SLICE: Final = 0.1  # seconds of handling bus messages before other tasks' turn
MAX_HEARTBEATS_OUT: Final = 16  # own heartbeats remembered until they come back
# Keys of a heartbeat's information: the sender's wall clock as it sent it, and whether it learns
# of an inbox's readers from presence (see StreamService.opening)
CLOCK: Final = "clock"
FOLLOWS_PRESENCE: Final = "followsPresence"


class BusPort(Protocol):
    """What the cluster uses of its bus (:class:`~roomd.cluster.Bus`, or a test double)."""

    mode: str
    published: int
    received: int
    dropped: int

    @property
    def ready(self) -> bool: ...

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    async def wait_ready(self) -> None: ...

    def publish(self, message: bytes) -> None: ...

    def subscribe(self, topic: bytes) -> None: ...

    def unsubscribe(self, topic: bytes) -> None: ...

    def details(self) -> dict[str, Any]: ...

    def paths_live(self) -> int: ...

    def heard_until(self, now: float) -> float: ...

    def complete(self) -> bool: ...


BatchHandler = Callable[[list[bytes]], Awaitable[None]]
BusFactory = Callable[[BatchHandler], BusPort]


@attrs.frozen
class _Gone:
    why: str  # "down" (missed heartbeats) or "left" (said goodbye)
    since: float  # wall-clock time
    epoch: int  # the life that went


class Cluster:
    """The cluster layer of one node (broker or mesh mode)."""

    def __init__(
        self,
        name: str,
        epoch: int,
        *,
        view: ClusterView,
        section: ClusterSection,
        host: ClusterHost,
        flusher: Flusher,
        history: HistoryLimits,
        bus: BusFactory | None = None,
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.view = view
        self.section = section
        self.host = host
        self.mode: str = section.mode
        self.timeout = section.heartbeat_interval * section.heartbeat_misses
        self.bus: BusPort = (
            bus(self._on_batch)
            if bus is not None
            else make_bus(name, section, flusher=flusher, on_batch=self._on_batch)
        )
        self.calls = Calls(
            name, timeout=section.call_timeout, nodes_up=view.nodes_up, publish=self._publish_call
        )
        outbound = Outbound(
            publish_entry=self._publish_entry,
            send_to_sequencer=self._send_to_sequencer,
            confirm=self._confirm,
            call=self._call_one,
            gather=self._gather,
            send_followed=self._send_followed,
        )
        self.streams = StreamService(
            name,
            host,
            StreamStore(history),
            self.sequencer_of,
            outbound,
            append_timeout=max(1.0, 2 * self.timeout),
            is_up=self.is_up,
            bus_live=lambda: self._bus_live,
            follows_presence=self._follows_presence,
        )
        self.calls.handlers[READ] = self._on_read
        self.calls.handlers[TAIL] = self._on_tail
        self.calls.handlers[TAILS] = self._on_tails
        self.calls.handlers[COPY] = self._on_copy
        self._rankings: dict[str, list[str]] = {}  # stream -> its ranking of the nodes below
        self._candidates: frozenset[str] = frozenset()
        self._candidates_key: tuple[int, bool] = (-1, False)
        self._sequencer_nodes: frozenset[str] = frozenset()
        self._seq = 0
        self._left = False  # said goodbye: nothing more is published
        self.draining = False
        self._last_tick = 0.0
        self._followed_version = 0
        self._resync_due = False
        self._synced = trio.Event()  # the bus is live and the streams read here caught up
        self._nursery: trio.Nursery | None = None
        self._call_slots = trio.Semaphore(MAX_CONCURRENT_CALLS)
        self._own_marker = _wire.origin_marker(name)
        self._view_settled = trio.Event()  # a snapshot arrived or a node expired
        self._joined = trio.Event()  # the view holds the cluster (or the ready timeout passed)
        self._ticking = trio.CancelScope()  # the heartbeat ticker's and the delta publisher's
        self._deltas: list[list[Any]] = []
        self._deltas_due = trio.Event()
        self._deltas_first = 0
        self._published_seq = 0  # the last delta sequence number on the bus
        self._expired_version = -1  # the view's version at the last expiry of appends
        self._echo_at = -math.inf  # when this node last heard its own heartbeat from the bus
        self._heartbeats_out: dict[int, float] = {}  # bus seq -> when published, until echoed
        self._bus_live = False  # our own heartbeats come back: publishing and subscriptions work
        self._gone: dict[str, _Gone] = {}
        self._lives: dict[str, tuple[int, float]] = {name: (epoch, time.time())}
        self._late: dict[str, float] = {}  # node -> how late its last heartbeat came (seconds)
        self.bad_messages = 0
        self.handling_turns = 0  # times the handling of a bus batch let other tasks run
        self.snapshots_requested = 0

    @property
    def bus_live(self) -> bool:
        return self._bus_live

    async def wait_synced(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until this node hears the others and has caught
        up what it missed while it could not (its bus was down, or it was frozen): a session
        resuming here reads the streams only then, so that a read is not lost to an answer
        that cannot reach it yet. Whether it is."""
        with trio.move_on_after(timeout):
            await self._synced.wait()
        return self._synced.is_set()

    def _note_synced(self) -> None:
        synced = self._bus_live and not self._resync_due
        if synced and not self._synced.is_set():
            self._synced.set()
        elif not synced and self._synced.is_set():
            self._synced = trio.Event()

    # Running -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster. Started once the bus is live and the view holds the state of every
        node heard from (so that the first clients see the whole cluster), or at the latest
        ``ready_timeout`` seconds after it began: then the node serves its own clients while the
        bus goes on trying in the background."""
        deadline = trio.current_time() + self.section.ready_timeout
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.streams.start(nursery.start_soon)
            await nursery.start(self.bus.run)
            with trio.move_on_at(deadline):
                await self.bus.wait_ready()
            self._heartbeat()
            self._last_tick = trio.current_time()
            nursery.start_soon(self._ticker)
            if not self.bus.ready:
                log.warning(
                    "%s: bus not ready after %.0f s (%s mode); serving anyway",
                    self.name,
                    self.section.ready_timeout,
                    self.mode,
                )
            else:
                await self._sync_view(deadline)
                up = len(self.view.nodes_up()) - 1
                log.info(
                    "%s: cluster ready (%s mode, epoch %d, %d other nodes)",
                    self.name,
                    self.mode,
                    self.epoch,
                    up,
                )
            self._joined.set()
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
        """Tell the other nodes this one is leaving, and give the message time to go out.

        The presence changes still waiting for their window go first (so that no delta follows
        the goodbye and announces this node again); after the goodbye nothing is published.
        """
        self._ticking.cancel()
        self._flush_deltas()
        self._publish(_wire.CONTROL, Kind.BYE, None)
        self._left = True
        with trio.CancelScope(shield=True):
            await trio.sleep(BYE_FLUSH)

    async def _ticker(self) -> None:
        with self._ticking:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._delta_publisher)
                while True:  # (on the cluster's common beat: see roomd.io._beat)
                    await trio.sleep(until_next(self.section.heartbeat_interval))
                    self._tick(trio.current_time())

    def _tick(self, now: float) -> None:
        """Every heartbeat interval: publish ours, check the bus, expire silent nodes.

        A node judges the others only while it can hear them: not while its own bus is down
        (their silence is its own deafness: the view is held, stale, and repaired once the bus
        is back), and not on waking from a freeze (its timers fire before it has read what came
        meanwhile). Either way every node gets a whole timeout from then to be heard again, and
        the streams this node reads are caught up from their sequencers.
        """
        self._heartbeat()
        frozen = self._woke(now)
        self._last_tick = now
        self._check_bus(now)
        if self._bus_live and not frozen:
            self._expire(now)
        if self.view.version != self._followed_version or self.streams.refollow_due:
            self._followed_version = self.view.version  # (the nodes changed, or a try failed)
            self.streams.refollow([user_stream(u) for u in self.host.hosted_users()])
        for name in self.view.resync_due(now, self.section.snapshot_retry):
            self._ask_snapshot(name)
        nodes_changed = self.view.version != self._expired_version
        self._expired_version = self.view.version
        self.streams.expire(now, everything=nodes_changed)
        self.streams.settle()

    def _woke(self, now: float) -> bool:
        """Whether this node was frozen since its last tick (its process stopped, or starved
        for longer than the heartbeat timeout: no timer fired, nothing was read). Checked
        before anything that came meanwhile is handled, and then: see :meth:`_heard_again`."""
        gap = now - self._last_tick
        if gap <= self.timeout or not self._last_tick:
            return False
        log.warning(
            "%s: this node was frozen for %.1f s; it judges no other node before hearing "
            "from them again",
            self.name,
            gap,
        )
        self._last_tick = now
        self._heard_again(now)  # (its bus counts as down until its own heartbeat is back)
        return True

    def _heard_again(self, now: float) -> None:
        """This node could not hear the others for a while: every node gets a whole timeout
        from now to be heard; the streams it numbered may have been taken over meanwhile, so
        it numbers them again only after gathering the others' copies. Once its own heartbeat
        comes back (its subscriptions are live again: answers reach it), the streams it reads
        are caught up and its unconfirmed sends go again."""
        self.view.touch_all(now)
        self.streams.relinquish()
        self._resync_due = True
        self._note_synced()

    def _resync(self, now: float) -> None:
        self._resync_due = False
        self._note_synced()
        self.streams.catch_up([user_stream(u) for u in self.host.hosted_users()])
        self.streams.resend(now)

    def _expire(self, now: float) -> None:
        """Declare down the nodes silent for a timeout, but only while this node hears itself:
        its own last heartbeat came back within one and a half intervals, so that its own
        deafness (the broker stopped a moment ago, say) is never taken for their death. Both
        are judged up to when it has handled everything that reached it: a node behind on
        reading (a burst) has their heartbeats, and its own, still queued."""
        heard = self.bus.heard_until(now)
        if heard - self._echo_at > 1.5 * self.section.heartbeat_interval:
            return
        epochs = {name: state.epoch for name, state in self.view.nodes.items()}
        dead, effects = self.view.expire(heard, self.timeout)
        for name in dead:
            log.warning(
                "%s: node %s is down (no heartbeat for %.1f s)", self.name, name, self.timeout
            )
            self._forget(name, "down", epochs[name])
        if dead:
            self._view_settled.set()
        self.host.apply_effects(effects)

    def _check_bus(self, now: float) -> None:
        """The bus is live while this node's own heartbeats come back through it, and every
        topic has a way through it (with sharded brokers: every shard has a live broker).
        Judged up to when it has handled everything that reached it (see :meth:`_expire`)."""
        heard = self.bus.heard_until(now)
        live = heard - self._echo_at <= self.timeout and self.bus.complete()
        if live != self._bus_live:
            self._bus_live = live
            self._note_synced()
            if live:
                log.info("%s: bus is live (its own heartbeats come back)", self.name)
                self._heard_again(now)
            elif not self.bus.complete():
                log.warning(
                    "%s: bus is down (every broker of a shard is down: the topics it carries "
                    "have no way through); the view of the cluster is held until it is back",
                    self.name,
                )
            else:
                log.warning(
                    "%s: bus is down (none of its own heartbeats came back for %.1f s); the "
                    "view of the cluster is held until it is back",
                    self.name,
                    self.timeout,
                )

    def _forget(self, name: str, why: str, epoch: int) -> None:
        self._late.pop(name, None)
        self._gone[name] = _Gone(why, time.time(), epoch)
        if len(self._gone) > MAX_GONE_NODES:
            oldest = min(self._gone, key=lambda n: self._gone[n].since)
            del self._gone[oldest]

    def _heartbeat(self) -> None:
        info = self.host.load()
        info[CLOCK] = time.time()  # (the others learn how late this node's messages come)
        info[FOLLOWS_PRESENCE] = True
        self._publish(_wire.CONTROL, Kind.HEARTBEAT, [self._published_seq, info])
        self._heartbeats_out[self._seq] = trio.current_time()  # (see _own)
        if len(self._heartbeats_out) > MAX_HEARTBEATS_OUT:  # (the bus is down: none comes back)
            del self._heartbeats_out[next(iter(self._heartbeats_out))]

    # Publishing ----------------------------------------------------------------------------------

    def _publish(self, topic: bytes, kind: str, body: Any) -> None:
        if self._left:
            return
        self._seq += 1
        self.bus.publish(_wire.encode(topic, kind, self.name, self.epoch, self._seq, body))

    def presence_changed(self, seq: int, delta: Delta) -> None:
        """Follow this node's rooms with subscriptions (routing by interest), and queue the
        delta: those of a ``DELTA_WINDOW`` travel as one message."""
        if isinstance(delta, Joined):
            self.bus.subscribe(_wire.room_topic(delta.ns, delta.room))
        elif isinstance(delta, Left):
            self.bus.unsubscribe(_wire.room_topic(delta.ns, delta.room))
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

    def publish_room(self, key: RoomKey, template: PushTemplate, skip_user: str | None) -> None:
        body = [template.body, template.volatile, skip_user]
        self._publish(_wire.room_topic(*key), Kind.ROOM, body)

    def publish_users(self, users: Iterable[str], template: PushTemplate) -> None:
        """A push for ``users``: once to each other node where any of them is connected."""
        for node, hosted in self.view.remote_hosts(users).items():
            body = [template.body, template.volatile, hosted]
            self._publish(_wire.node_topic(node), Kind.USERS, body)

    def publish_all(self, template: PushTemplate) -> None:
        self._publish(_wire.ALL, Kind.ALL, [template.body, template.volatile])

    def _publish_call(self, call_id: int, event: str, data: Any, targets: list[str]) -> None:
        body = [call_id, event, data, targets]
        topic = _wire.node_topic(targets[0]) if len(targets) == 1 else _wire.CONTROL
        self._publish(topic, Kind.CALL, body)

    # Streams -------------------------------------------------------------------------------------

    def sequencer_of(self, stream: StreamKey) -> str:
        """The node that numbers ``stream``: first in its rendezvous ranking of the nodes up
        (draining nodes hand their streams over)."""
        return self._ranking(stream)[0]

    def _ranking(self, stream: StreamKey) -> list[str]:
        nodes = self._sequencer_candidates()
        if nodes != self._sequencer_nodes:
            self._sequencer_nodes = nodes
            self._rankings.clear()
        ranked = self._rankings.get(stream)
        if ranked is None:
            if len(self._rankings) >= MAX_RANKINGS:
                self._rankings.clear()
            ranked = self._rankings[stream] = ranking(stream, nodes) or [self.name]
        return ranked

    def _sequencer_candidates(self) -> frozenset[str]:
        """The nodes that number streams: those up, but not draining (this one included)."""
        key = (self.view.version, self.draining)
        if key != self._candidates_key:
            nodes = {n.name for n in self.view.nodes.values() if n.status == "up"}
            if self.draining:
                nodes.discard(self.name)
            else:
                nodes.add(self.name)
            self._candidates, self._candidates_key = frozenset(nodes), key
        return self._candidates

    def drain(self) -> None:
        """This node drains: it numbers no stream from now on (the others take them over, from
        its copies), and says so at once."""
        self.draining = True
        self._heartbeat()

    def _publish_entry(
        self, stream: StreamKey, entry: Entry, readers: set[str]
    ) -> tuple[set[str], bool]:
        """To the stream's readers: a room's on its topic; an inbox's to the nodes where the
        user is connected, as presence says, and those that asked for its tail lately
        (``readers``: they may know of a connection presence has not told of yet). The nodes
        it should reach, as this node knows them, and whether it comes back to this node (its
        readers here wait for that: see :mod:`._streaming`): a room's entry does when this node
        has members of the room (it subscribes to its topic); an inbox's is also published on
        this node's own topic when the user is connected here."""
        body = [stream, entry_to_wire(entry)]
        room = room_of(stream)
        user = user_of(stream)
        own = self.view.own
        if room is not None:
            self._publish(_wire.room_topic(*room), Kind.ENTRY, body)
            nodes = set(self.view.nodes_in_room(room))
            echo = room in own.rooms
        else:
            nodes = readers | set(self.view.remote_hosts([user] if user is not None else []))
            nodes.discard(self.name)
            for node in sorted(nodes):
                self._publish(_wire.node_topic(node), Kind.ENTRY, body)
            echo = user in own.users
            if echo:
                self._publish(_wire.node_topic(self.name), Kind.ENTRY, body)
        # With no reader elsewhere to keep a copy, the node that would number the stream
        # should this one go keeps one.
        if not nodes - {self.name}:
            successor = self._successor(stream)
            if successor is not None:
                self._publish(_wire.node_topic(successor), Kind.ENTRY, body)
                nodes.add(successor)
        return nodes, echo

    def _successor(self, stream: StreamKey) -> str | None:
        following = [n for n in self._ranking(stream)[:2] if n != self.name]
        return following[0] if following else None

    async def _gather(self, stream: StreamKey) -> dict[str, list[Any]]:
        """The copies of ``stream`` held by the nodes that may hold one: those where its
        readers are (as presence says), and the node that would number it without this one
        (its sequencer until this node joined, if it did). A takeover starts from them. A node
        that does not answer within a heartbeat interval is asked again while it is up (busy,
        or dead and not declared down yet), for at most a heartbeat timeout and a call timeout
        more: numbered without its copy, the stream could give the next message an offset that
        copy holds, and every reader holding it would drop that message. Nor are they asked
        before this node hears them (it waits up to a heartbeat timeout for its bus), nor
        before it has joined the cluster: a node just started (a restart within the heartbeat
        timeout, which the others take for its former life) is asked to number its streams
        before it knows where their readers are; numbered from nothing, they would reuse
        offsets every reader holds."""
        await self._joined.wait()
        await self.wait_synced(self.timeout)
        room = room_of(stream)
        user = user_of(stream)
        if room is not None:
            targets = set(self.view.nodes_in_room(room))
        else:
            targets = set(self.view.remote_hosts([user] if user is not None else []))
        others = self._sequencer_candidates() - {self.name}
        live = set(self.view.nodes) - {self.name}  # (draining ones included: they may number)
        if others:
            targets.add(ranking(stream, others)[0])
        if live:
            targets.add(ranking(stream, live)[0])
        targets &= live
        if not targets:
            return {}
        timeout = max(0.2, self.section.heartbeat_interval)
        out = await self.calls.call(COPY, stream, targets=sorted(targets), timeout=timeout)
        copies: dict[str, list[Any]] = dict(out.replies)
        with trio.move_on_after(self.timeout + self.section.call_timeout):
            while missing := [node for node in out.missing if self.is_up(node)]:
                out = await self.calls.call(COPY, stream, targets=missing, timeout=timeout)
                copies.update(out.replies)
        return copies

    def _send_to_sequencer(self, node: str, stream: StreamKey, draft: Entry, hops: int) -> None:
        self._publish(_wire.node_topic(node), Kind.SEQUENCE, [stream, entry_to_wire(draft), hops])

    def _confirm(self, origin: str, stream: StreamKey, message_id: str, at: Position) -> None:
        body = [stream, message_id, at.epoch, at.offset]
        self._publish(_wire.node_topic(origin), Kind.CONFIRM, body)

    async def _call_one(self, node: str, event: str, data: Any) -> Any:
        out = await self.calls.call(event, data, targets=[node])
        if node in out.replies:
            return out.replies[node]
        error = out.errors.get(node)
        if error is None:
            raise RequestTimeout(ErrorCode.TIMEOUT, f"{node} did not answer {event!r}")
        if error.get("code") == ErrorCode.HISTORY_GAP:
            raise Gap(str(error.get("message")))
        raise RoomdError(str(error.get("code")), str(error.get("message")))

    async def _on_read(self, body: Any, origin: str) -> Any:
        return await self.streams.on_read(body, origin)

    async def _on_tail(self, body: Any, origin: str) -> Any:
        return await self.streams.on_tail(body, origin)

    async def _on_tails(self, body: Any, origin: str) -> Any:
        return self.streams.tails_now(body, origin)

    async def _on_copy(self, body: Any, origin: str) -> Any:
        return self.streams.on_copy(body)

    # Receiving -----------------------------------------------------------------------------------

    async def _on_batch(self, batch: list[bytes]) -> None:
        """Handle what the bus read, in order, giving the other tasks a turn every
        ``HANDLING_SLICE`` seconds: a batch can hold thousands of messages, each a push to a
        thousand connections, and a node that handled them in one go would starve its own
        heartbeats (the others would declare it down) and its connections' writes."""
        now = trio.current_time()
        self._woke(now)  # (a batch read on waking may come before the ticker's turn)
        own = self._own_marker
        turn_ends = time.perf_counter() + HANDLING_SLICE
        for message in batch:
            try:
                mine = _wire.is_from(message, own)
                envelopes = self._own(message) if mine else _wire.decode_all(message)
            except Exception:
                self.bad_messages += 1
                log.exception("%s: bad bus message %r", self.name, message[:80])
                continue
            for envelope in envelopes:  # (one that fails does not take the rest of its batch)
                if time.perf_counter() > turn_ends:
                    now, turn_ends = await self._next_turn()
                try:
                    if mine:
                        stream, wire = envelope.body
                        self.streams.on_echo(stream, wire[0])
                    else:
                        self._dispatch(envelope, now)
                except Exception:
                    self.bad_messages += 1
                    log.exception("%s: bad bus message %r", self.name, message[:80])

    async def _next_turn(self) -> tuple[float, float]:
        """Let the other tasks run; the time now, and when this turn of handling ends."""
        self.handling_turns += 1
        await trio.lowlevel.checkpoint()
        return trio.current_time(), time.perf_counter() + HANDLING_SLICE

    def _own(self, message: bytes) -> list[Envelope]:
        """One of this node's messages, back from the bus: heartbeats (they tell that the bus
        is live, or that another node uses this name) and stream entries (they have left the
        process: this node's readers may have them). The entries whose echo is to be handled
        (each may release deliveries: the caller takes turns between them)."""
        if self.streams.awaiting_echo and message[:1] in b"rn":
            return [e for e in _wire.decode_all(message) if e.kind == Kind.ENTRY]
        if _wire.CONTROL in message[:2]:
            envelope = _wire.decode(message)
            if envelope.kind != Kind.HEARTBEAT:
                return []
            if envelope.epoch != self.epoch:
                log.error("%s: another node uses the name %s", self.name, self.name)
                return []
            self._echo_at = trio.current_time()
            published = self._heartbeats_out.pop(envelope.seq, None)
            for seq in [seq for seq in self._heartbeats_out if seq < envelope.seq]:
                del self._heartbeats_out[seq]  # (lost on the way)
            if published is not None and self.streams.awaiting_echo:
                self.streams.overtaken(published)  # (their echoes would have come before it)
            if not self._bus_live:
                self._check_bus(self._echo_at)
            if self._resync_due:
                self._resync(self._echo_at)
        return []

    def _dispatch(self, env: Envelope, now: float) -> None:
        host = self.host
        kind, body = env.kind, env.body
        if kind == Kind.ROOM:
            host.deliver_room(env.room_key(), PushTemplate(body[0], volatile=body[1]), body[2])
        elif kind == Kind.USERS:
            host.deliver_users(body[2], PushTemplate(body[0], volatile=body[1]))
        elif kind == Kind.ALL:
            host.deliver_all(PushTemplate(body[0], volatile=body[1]))
        elif kind == Kind.ENTRY:
            self.streams.on_entry(body[0], entry_from_wire(body[1]))
        elif kind == Kind.SEQUENCE:
            self.streams.on_sequence_request(env.node, body[0], entry_from_wire(body[1]), body[2])
        elif kind == Kind.CONFIRM:
            stream, message_id, epoch, offset = body
            self.streams.on_confirm(stream, message_id, Position(epoch, offset))
        elif kind == Kind.FOLLOWED:
            stream, start, entries = body
            self.streams.on_followed(
                stream,
                None if start is None else Position(start[0], start[1]),
                [entry_from_wire(item) for item in entries],
            )
        elif self._said_goodbye(env):
            return  # a presence message of a life that already left (sent before its goodbye)
        elif kind == Kind.DELTAS:
            self._track(env)
            first, deltas = body
            asked, effects = False, list[Effect]()
            before = self.view.nodes.get(env.node)
            came: list[str] = []
            for i, wire in enumerate(deltas):
                delta = delta_from_wire(wire)
                if (
                    type(delta) is Online
                    and delta.count
                    and (before is None or delta.user not in before.users)
                ):
                    came.append(delta.user)
                wants, more = self.view.delta(env.node, env.epoch, first + i, delta, now)
                asked = asked or wants
                effects.extend(more)
            self._after(env.node, asked, effects)
            if came:
                self._arrived(env.node, came)
        elif kind == Kind.HEARTBEAT:
            self._track(env)
            clock = body[1].get(CLOCK) if isinstance(body[1], dict) else None
            if isinstance(clock, float):
                self._late[env.node] = max(0.0, time.time() - clock)
            wants, effects = self.view.heartbeat(env.node, env.epoch, body[0], now, body[1])
            self._after(env.node, wants, effects)
        elif kind == Kind.SNAPSHOT_REQUEST:
            own = self.view.own
            self._publish(_wire.node_topic(body), Kind.SNAPSHOT, [own.seq, own.snapshot()])
        elif kind == Kind.SNAPSHOT:
            before = self.view.nodes.get(env.node)
            had = set(before.users) if before is not None else set()
            host.apply_effects(self.view.snapshot(env.node, env.epoch, body[0], body[1], now))
            self._view_settled.set()
            after = self.view.nodes.get(env.node)
            if after is not None:
                self._arrived(env.node, [user for user in after.users if user not in had])
        elif kind == Kind.BYE:
            if env.node in self.view.nodes:
                log.info("%s: node %s left", self.name, env.node)
            self._forget(env.node, "left", env.epoch)
            host.apply_effects(self.view.bye(env.node))
        elif kind == Kind.CALL:
            self._on_call(env)
        elif kind == Kind.REPLY:
            call_id, ok, result = body
            self.calls.on_reply(env.node, call_id, ok, result)

    def _arrived(self, node: str, users: list[str]) -> None:
        """``users`` have a first connection on ``node``, as presence says now: the sequencer
        of each one's inbox tells ``node`` where its copy starts (see
        :meth:`StreamService.arrived`)."""
        state = self.view.nodes.get(node)
        if state is None:
            return
        late = self._late.get(node, 0.0)
        # Only the inboxes this node has numbered (StreamService.arrived): not a ranking asked
        # for every user arriving anywhere (remembered, those of all the cluster's users would
        # fill every node's memory; computed, they cost a hash per node each)
        numbered = self.streams.store.sequencers
        for user in users:
            stream = user_stream(user)
            if stream in numbered and user in state.users:
                self.streams.arrived(stream, node, late)

    def _follows_presence(self, node: str) -> bool:
        """Whether ``node`` learns of an inbox's readers from presence (a version that says
        so in its heartbeats: see :meth:`StreamService.opening`)."""
        state = self.view.nodes.get(node)
        return state is not None and state.info.get(FOLLOWS_PRESENCE) is True

    def _send_followed(
        self, node: str, stream: StreamKey, start: Position | None, entries: list[Entry]
    ) -> None:
        body = [
            stream,
            None if start is None else [start.epoch, start.offset],
            [entry_to_wire(entry) for entry in entries],
        ]
        self._publish(_wire.node_topic(node), Kind.FOLLOWED, body)

    def _said_goodbye(self, env: Envelope) -> bool:
        gone = self._gone.get(env.node)
        return gone is not None and gone.why == "left" and gone.epoch == env.epoch

    def _track(self, env: Envelope) -> None:
        known = self.view.nodes.get(env.node)
        if known is None:
            log.info("%s: node %s is up", self.name, env.node)
            self._gone.pop(env.node, None)
        elif known.epoch != env.epoch:
            log.info("%s: node %s restarted (a new epoch)", self.name, env.node)
        life = self._lives.get(env.node)
        if life is None or life[0] != env.epoch:
            self._lives[env.node] = (env.epoch, time.time())

    def _after(self, name: str, wants_snapshot: bool, effects: list[Effect]) -> None:
        if wants_snapshot:
            self._ask_snapshot(name)
        self.host.apply_effects(effects)

    def _ask_snapshot(self, name: str) -> None:
        self.snapshots_requested += 1
        log.debug("%s: asking %s for a snapshot", self.name, name)
        self._publish(_wire.node_topic(name), Kind.SNAPSHOT_REQUEST, self.name)

    # Calls from other nodes ----------------------------------------------------------------------

    def _on_call(self, env: Envelope) -> None:
        call_id, event, data, targets = env.body
        if self.name not in targets or self._nursery is None:
            return
        if event == TAIL and isinstance(data, str):  # (answered at once: no task per call)
            answer = self.streams.tail_now(data, env.node)
            if answer is not None:
                self._publish(_wire.node_topic(env.node), Kind.REPLY, [call_id, True, answer])
                return
        self._nursery.start_soon(self._answer, env.node, call_id, event, data)

    async def _answer(self, origin: str, call_id: int, event: str, data: Any) -> None:
        if self._call_slots.value == 0:
            reply = Reply("", False, error_body(ErrorCode.BUSY, "too many calls in progress"))
        else:
            async with self._call_slots:
                reply = await run_handler(self.calls.handlers.get(event), event, data, origin)
        topic = _wire.node_topic(origin)
        try:
            self._publish(topic, Kind.REPLY, [call_id, reply.ok, reply.result])
        except TypeError:
            log.error("%s: cluster handler %r returned data with no msgpack form", self.name, event)
            error = error_body(ErrorCode.INTERNAL, "internal error")
            self._publish(topic, Kind.REPLY, [call_id, False, error])

    # Stats ---------------------------------------------------------------------------------------

    def is_up(self, node: str) -> bool:
        return node in self.view.nodes

    def gone_since(self, node: str) -> float | None:
        gone = self._gone.get(node)
        return gone.since if gone is not None and node not in self.view.nodes else None

    def life(self, node: str) -> tuple[int, float] | None:
        state = self.view.nodes.get(node)
        life = self._lives.get(node)
        if state is None or life is None or life[0] != state.epoch:
            return None
        return life

    def stats(self) -> dict[str, Any]:
        now = trio.current_time()
        nodes = []
        for state in sorted(self.view.nodes.values(), key=lambda n: n.name):
            own = state.name == self.name
            info = self.host.load() if own else state.info
            age = 0.0 if own else now - state.last_seen
            nodes.append(
                {
                    "name": state.name,
                    "status": info.get("status", "up"),
                    "lastSeen": round(age, 3) if math.isfinite(age) else None,
                    **{k: v for k, v in info.items() if k != "status"},
                }
            )
        for name, gone in sorted(self._gone.items()):
            if name not in self.view.nodes:
                nodes.append({"name": name, "status": gone.why, "since": round(gone.since, 3)})
        return {
            "mode": self.mode,
            "nodes": nodes,
            "bus": {
                "live": self._bus_live,
                "published": self.bus.published,
                "received": self.bus.received,
                "dropped": self.bus.dropped,
                "badMessages": self.bad_messages,
                "snapshotsRequested": self.snapshots_requested,
                **self.bus.details(),
            },
        }

    def gauges(self) -> dict[str, float]:
        return {
            "cluster_nodes_up": len(self.view.nodes_up()),
            "cluster_users_online": self.view.online_count(),
            "bus_live": int(self._bus_live),
            "bus_brokers_live": self.bus.paths_live() if self.mode == "broker" else 0,
        }

    def counters(self) -> dict[str, tuple[str, float]]:
        bus = self.bus
        details = bus.details()
        return {
            "bus_published": (
                "ZeroMQ messages published on the bus (a batch of one round's messages to one "
                "topic counts once).",
                bus.published,
            ),
            "bus_coalesced": (
                "Messages that left in a batch with others to the same topic (besides the first).",
                details.get("coalesced", 0),
            ),
            "bus_received": ("Messages received from the bus.", bus.received),
            "bus_dropped": ("Messages the bus could not send.", bus.dropped),
            "bus_bad_messages": ("Bus messages that could not be handled.", self.bad_messages),
            "bus_handling_turns": (
                "Times the handling of what the bus read let other tasks run before it went on "
                f"(every {HANDLING_SLICE * 1000:g} ms): the node was busy with the bus.",
                self.handling_turns,
            ),
            "bus_duplicates": (
                "Copies of bus messages dropped (they came through another broker first).",
                details.get("duplicates", 0),
            ),
            "bus_broker_outages": ("Times a broker was found down.", details.get("outages", 0)),
            "bus_refused": (
                "Connections to this node's bus refused (an unknown key).",
                details.get("refused", 0),
            ),
            "bus_handshake_failures": (
                "Connections of this node's bus that a broker or peer refused or failed.",
                details.get("handshakeFailures", 0),
            ),
            "snapshots_requested": (
                "Presence snapshots asked of other nodes.",
                self.snapshots_requested,
            ),
            "stream_takeovers": (
                "Streams this node began to number (new, or taken over from another node).",
                self.streams.takeovers,
            ),
            "stream_repairs": (
                "Holes in a stream's messages fetched from its sequencer.",
                self.streams.repairs,
            ),
            "stream_lost": (
                "Messages a repair found no longer held anywhere (delivered past).",
                self.streams.lost,
            ),
            "stream_echoes_missed": (
                "Entries this node numbered and delivered to its own readers without their echo "
                "from the bus (dropped on the way).",
                self.streams.echoes_missed,
            ),
        }

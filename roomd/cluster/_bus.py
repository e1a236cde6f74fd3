"""The bus: a PUB socket and SUB sockets, to the brokers or to every mesh peer.

Broker mode: the PUB connects to every broker's XSUB (frontend); one SUB per broker connects
to its XPUB (backend). Brokers come in shards (one by default): a topic is subscribed to on the
SUBs of its shard's brokers only (:func:`~roomd.cluster._wire.shard_of`), so the PUB sockets
upstream send it through those brokers only. The brokers of one shard are replicas: every
message arrives once per live replica, and the copies are dropped by (origin, epoch, seq)
(:class:`~roomd.cluster._dedup.Dedup`). Mesh mode: the PUB binds this node's endpoint; one SUB
connects to every peer's and to its own.

The bus is ready once a probe published on this node's own topic has come back through it:
then its subscriptions are live (the slow-joiner problem: messages published before a
subscription reaches the publisher are lost silently), through every shard. Probes (one per
shard) go on every ``liveness / 3`` seconds: each broker they come back through is live, and a
broker none came back through for ``liveness`` seconds is down (logged, and counted in
:attr:`Bus.outages`). The bus is :meth:`Bus.complete` while every shard has a live broker.

CurveZMQ (given a keypair): every connection is encrypted; a connecting socket knows each
server's public key; the bound PUB of mesh mode admits only the keys in the key directory
(``trusted``), through a ZAP handler run as a task of :meth:`Bus.run`. A socket monitor on
each connecting socket reports handshakes: a refusal or a security mismatch is logged and,
since libzmq then gives up on that connection, the bus connects again every
:data:`RETRY_REFUSED` seconds (a key added to the server's directory takes effect then).
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import trio

from ..io import (
    Flusher,
    Handshake,
    Keypair,
    Monitor,
    SocketType,
    TrustedKeys,
    ZapRequest,
    ZmqSocket,
    make_context,
    open_monitor,
    open_socket,
    serve_zap,
    until_next,
)
from . import _wire
from ._dedup import Dedup

log = logging.getLogger("roomd.bus")

PROBE_INTERVAL: Final = 0.02  # seconds between readiness probes
PROBE_LOG_EVERY: Final = 250  # probes (5 s) between "still waiting" warnings
RECEIVE_BATCH: Final = 1024
RETRY_REFUSED: Final = 2.0  # seconds before connecting again to a server that refused us
ZAP_DOMAIN: Final = "bus"
MAX_LOGGED_KEYS: Final = 1000  # refused keys remembered so that each is logged once


@attrs.frozen
class Remote:
    """A process this node's bus connects to: a broker, or a mesh peer."""

    name: str  # for logs; its public key is the key directory's <name>.key
    subscribe: str  # the endpoint a SUB connects to (a broker's backend, a peer's bus)
    publish: str | None = None  # the endpoint the PUB connects to (a broker's frontend)
    key: str | None = None  # its CURVE public key (Z85); None on an insecure bus
    shard: int = 0  # brokers: the topics it carries (see _wire.shard_of)


@attrs.define(eq=False)
class _Path:
    """One SUB socket and what came through it."""

    name: str
    sub: ZmqSocket
    shard: int
    probe: bytes  # this node's probe through the brokers of the shard
    echo_at: float = -math.inf  # when this node's probe last came back through it
    live: bool = False
    received: int = 0
    waiting: bool = True  # for the socket: everything that came through it is handled
    handled_at: float = -math.inf  # when what was queued in it was last all read (see heard)

    def heard(self, now: float) -> float:
        """Up to when this node has handled everything that came through this path: now
        while it waits for more; while it handles a backlog, when the last one it caught up
        with was read. Silence is judged up to then only: a probe or a heartbeat sitting unread
        behind thousands of messages is late, not lost."""
        return now if self.waiting else self.handled_at


class Bus:
    """Single-frame publish/subscribe between nodes.

    Resource handling: :meth:`run` owns the ZeroMQ context, the sockets, the ZAP handler and
    the receive and watch tasks; it closes them when cancelled. :meth:`publish` never blocks: it
    queues the message, and the node's flusher sends everything queued in a round back to back
    (a lone ``send`` wakes libzmq's I/O thread each time and costs several times more). At the
    high-water mark libzmq drops messages (receivers detect lost presence deltas by their
    numbering).

    Error handling: ``on_batch`` is awaited with every batch received; it must not raise.
    """

    def __init__(
        self,
        name: str,
        *,
        flusher: Flusher,
        mode: str,
        on_batch: Callable[[list[bytes]], Awaitable[None]],
        remotes: Sequence[Remote] = (),
        bind: str | None = None,
        keys: Keypair | None = None,
        trusted: TrustedKeys | None = None,
        liveness: float = 1.5,
    ) -> None:
        if mode == "broker" and not remotes:
            raise ValueError("broker mode needs at least one broker")
        if mode == "mesh" and bind is None:
            raise ValueError("mesh mode needs this node's bus endpoint")
        if keys is not None and any(r.key is None for r in remotes):
            raise ValueError("a CurveZMQ bus needs the public key of every broker and peer")
        self.name = name
        self.mode = mode
        self.endpoint: str | None = None  # the bound endpoint, in mesh mode
        self.published = 0  # ZeroMQ messages (a batch counts once)
        self.coalesced = 0  # messages that left in a batch with others (after its first)
        self.dropped = 0
        self.received = 0
        self.duplicates = 0  # copies of a message that came through another broker first
        self.outages = 0  # times a broker was found down
        self.refused = 0  # connections to this node's bound socket refused (mesh, CurveZMQ)
        self.handshake_failures = 0  # this node's connections that a server refused or failed
        self._on_batch = on_batch
        self._flusher = flusher
        self._outgoing: list[bytes] = []
        self._remotes = tuple(remotes)
        self._bind = bind
        self._keys = keys
        self._trusted = trusted
        self._liveness = liveness
        self._pub: ZmqSocket | None = None
        self._paths: list[_Path] = []
        shards = sorted({r.shard for r in remotes}) if mode == "broker" else [0]
        if shards != list(range(len(shards))):
            raise ValueError(f"the brokers' shards must be 0, 1, ... without a hole: {shards}")
        self.shards = len(shards)
        # Replicas (several brokers in a shard) deliver copies, which are dropped.
        self._dedup = Dedup() if mode == "broker" and len(remotes) > self.shards else None
        token = b"probe:" + secrets.token_bytes(8).hex().encode()
        self._probes = [_wire.probe_topic(name, shard) + token for shard in range(self.shards)]
        self._ready = trio.Event()
        self._failing: set[str] = set()  # endpoints whose last handshake failed (logged)
        self._retrying: set[tuple[int, str]] = set()
        self._logged_keys: set[str] = set()

    @property
    def secure(self) -> bool:
        return self._keys is not None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Return once this node's subscriptions are live (its probe came back)."""
        await self._ready.wait()

    def details(self) -> dict[str, Any]:
        """What the cluster's stats show of the bus besides its counters."""
        out: dict[str, Any] = {
            "secure": self.secure,
            "duplicates": self.duplicates,
            "refused": self.refused,
            "handshakeFailures": self.handshake_failures,
            "coalesced": self.coalesced,
        }
        if self.mode == "broker":
            out["brokers"] = [
                {"name": p.name, "live": p.live, **({"shard": p.shard} if self.shards > 1 else {})}
                for p in self._paths
            ]
            out["outages"] = self.outages
        return out

    def heard_until(self, now: float) -> float:
        """Up to when this node has handled everything that reached it (see
        :meth:`_Path.heard`): what it did not hear from before then is missing."""
        return min((path.heard(now) for path in self._paths), default=now)

    def paths_live(self) -> int:
        return sum(p.live for p in self._paths)

    def complete(self) -> bool:
        """Whether every topic has a way through: a live broker in every shard (in mesh mode,
        always: each peer is a node, judged by the cluster)."""
        if self.mode != "broker":
            return True
        return len({p.shard for p in self._paths if p.live}) == self.shards

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the sockets (started then), probe until the subscriptions are live, then
        keep watching the brokers."""
        ctx = make_context()
        try:
            async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
                if self._keys is not None and self.mode == "mesh":
                    # Before the PUB binds: libzmq lets anyone in while no handler is bound.
                    await nursery.start(serve_zap, ctx, self._authorize)
                pub = await stack.enter_async_context(
                    open_socket(ctx, SocketType.PUB, keys=self._keys, zap_domain=ZAP_DOMAIN)
                )
                subs = [
                    await stack.enter_async_context(
                        open_socket(ctx, SocketType.SUB, keys=self._keys)
                    )
                    for _ in (self._remotes if self.mode == "broker" else ("mesh",))
                ]
                remotes = self._remotes if self.mode == "broker" else (Remote("mesh", ""),)
                self._paths = [
                    _Path(r.name, sub, r.shard, self._probes[r.shard])
                    for r, sub in zip(remotes, subs, strict=True)
                ]
                for path in self._paths:
                    path.sub.subscribe(_wire.probe_topic(self.name, path.shard))
                for topic in (_wire.CONTROL, _wire.ALL, _wire.node_topic(self.name)):
                    self.subscribe(topic)
                watched = [pub, *subs] if self.mode == "broker" else subs
                monitors = [
                    await stack.enter_async_context(open_monitor(ctx, s, self.name))
                    for s in watched
                ]
                self._connect(pub, subs)
                self._pub = pub
                try:
                    for sock, monitor in zip(watched, monitors, strict=True):
                        nursery.start_soon(self._watch_handshakes, sock, monitor, nursery)
                    for path in self._paths:
                        nursery.start_soon(self._receive, path)
                    nursery.start_soon(self._probe_paths, pub)
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    # Before the sockets close (closing checkpoints): other tasks unwinding
                    # meanwhile (a connection leaving its rooms) must find no socket, not a
                    # closed one.
                    self._pub = None
                    nursery.cancel_scope.cancel()
        finally:
            self._paths = []
            ctx.destroy(linger=0)

    def _connect(self, pub: ZmqSocket, subs: list[ZmqSocket]) -> None:
        if self.mode == "broker":
            for remote, sub in zip(self._remotes, subs, strict=True):
                assert remote.publish is not None
                pub.connect(remote.publish, remote.key)
                sub.connect(remote.subscribe, remote.key)
            return
        assert self._bind is not None
        self.endpoint = pub.bind(self._bind)
        (sub,) = subs
        for remote in self._remotes:
            sub.connect(remote.subscribe, remote.key)
        sub.connect(self.endpoint, self._keys.public if self._keys is not None else None)

    def _server_key(self, endpoint: str) -> str | None:
        for remote in self._remotes:
            if endpoint in (remote.subscribe, remote.publish):
                return remote.key
        return self._keys.public if self._keys is not None else None

    def _remote_name(self, endpoint: str) -> str:
        for remote in self._remotes:
            if endpoint in (remote.subscribe, remote.publish):
                return remote.name
        return self.name

    # Probes and brokers ---------------------------------------------------------------------

    async def _probe_paths(self, pub: ZmqSocket) -> None:
        attempt = 0
        while not self._ready.is_set():
            attempt += 1
            self._send_probes(pub)
            with trio.move_on_after(PROBE_INTERVAL):
                await self._ready.wait()
            if self._ready.is_set():
                log.debug("bus ready after %d probes", attempt)
            elif attempt % PROBE_LOG_EVERY == 0:
                where = ", ".join(r.subscribe for r in self._remotes) or "no peer"
                log.warning("bus not ready yet (%s mode, %s)", self.mode, where)
        while True:  # (with the heartbeats, when it is their interval: one wake-up for both)
            await trio.sleep(until_next(self._liveness / 3))
            self._send_probes(pub)
            self._check_paths(trio.current_time())

    def _send_probes(self, pub: ZmqSocket) -> None:
        for probe in self._probes:
            pub.send_nowait(probe)

    def _check_paths(self, now: float) -> None:
        if self.mode != "broker":
            return
        for path in self._paths:
            if path.live and path.heard(now) - path.echo_at > self._liveness:
                path.live = False
                self.outages += 1
                log.warning(
                    "%s: broker %s is down (none of this node's probes came back through it "
                    "for %.1f s); %d of %d brokers live",
                    self.name,
                    path.name,
                    self._liveness,
                    self.paths_live(),
                    len(self._paths),
                )

    def _echo(self, path: _Path) -> None:
        path.echo_at = trio.current_time()
        if not path.live:
            path.live = True
            if self.mode == "broker" and len(self._paths) > 1:
                log.info(
                    "%s: broker %s is live; %d of %d brokers live",
                    self.name,
                    path.name,
                    self.paths_live(),
                    len(self._paths),
                )
        if self.complete():  # (every shard's subscriptions are live)
            self._ready.set()

    async def _receive(self, path: _Path) -> None:
        probe, dedup = path.probe, self._dedup
        while True:
            # (waiting means waiting on an empty socket: a batch taken and not handled yet,
            # even across a checkpoint, is a backlog)
            batch = path.sub.receive_batch_nowait(RECEIVE_BATCH)
            if batch:
                await trio.lowlevel.checkpoint()  # (the others' turn, as a wait would give)
            else:
                path.waiting = True
                try:
                    batch = await path.sub.receive_batch(RECEIVE_BATCH)
                finally:
                    path.waiting = False
            read_at = trio.current_time()
            caught_up = len(batch) < RECEIVE_BATCH  # (else more may be queued)
            path.received += len(batch)
            if probe in batch:
                self._echo(path)
                batch = [m for m in batch if m != probe]
            if dedup is not None:
                first = [m for m in batch if dedup.first(m)]
                self.duplicates += len(batch) - len(first)
                batch = first
            self.received += len(batch)
            if batch:
                await self._on_batch(batch)
            if caught_up:
                path.handled_at = read_at

    # Security ---------------------------------------------------------------------------------

    def _authorize(self, request: ZapRequest) -> bool:
        """The ZAP policy of the mesh's bound PUB: a key of the key directory."""
        key = request.public_key
        if key is not None and self._trusted is not None:
            name = self._trusted.name_of(key)
            if name is not None:
                log.debug("%s: %s subscribes from %s", self.name, name, request.address)
                return True
        self.refused += 1
        shown = key or request.mechanism
        if shown not in self._logged_keys:
            if len(self._logged_keys) >= MAX_LOGGED_KEYS:
                self._logged_keys.clear()
            self._logged_keys.add(shown)
            where = self._trusted.directory if self._trusted is not None else "the key directory"
            log.warning(
                "%s: refused a subscriber from %s: its key %s is not in %s",
                self.name,
                request.address,
                shown,
                where,
            )
        return False

    async def _watch_handshakes(
        self, sock: ZmqSocket, monitor: Monitor, nursery: trio.Nursery
    ) -> None:
        while True:
            event = await monitor.next_event()
            endpoint, what = event.endpoint, event.what
            peer = self._remote_name(endpoint)
            if what == Handshake.SUCCEEDED:
                if endpoint in self._failing:
                    self._failing.discard(endpoint)
                    log.info("%s: connected to %s (%s)", self.name, peer, endpoint)
                continue
            if what == Handshake.DISCONNECTED:
                continue
            self.handshake_failures += 1
            if endpoint not in self._failing:
                self._failing.add(endpoint)
                log.error("%s: %s", self.name, self._explain(what, peer, endpoint, event.value))
            if what in (Handshake.REFUSED, Handshake.MISMATCH):
                key = (id(sock), endpoint)
                if key not in self._retrying:
                    self._retrying.add(key)
                    nursery.start_soon(self._connect_again, sock, endpoint, key)

    def _explain(self, what: str, peer: str, endpoint: str, value: int) -> str:
        if what == Handshake.REFUSED:
            return (
                f"{peer} ({endpoint}) refused this node's key ({value}): is {self.name}.key "
                f"in its key directory? Trying again every {RETRY_REFUSED:g} s"
            )
        if what == Handshake.MISMATCH:
            ours = "CurveZMQ" if self.secure else "no security (cluster.insecure)"
            return (
                f"{peer} ({endpoint}) does not speak this node's security ({ours}): "
                "cluster.insecure must be the same on every node and broker"
            )
        if self.secure:
            return (
                f"the handshake with {peer} ({endpoint}) failed: is {peer}.key its public key, "
                "and does it speak CurveZMQ? (libzmq keeps trying)"
            )
        return (
            f"the handshake with {peer} ({endpoint}) failed: does it expect CurveZMQ? This "
            "node has cluster.insecure = true: cluster.insecure must be the same on every node "
            "and broker (libzmq keeps trying)"
        )

    async def _connect_again(self, sock: ZmqSocket, endpoint: str, key: tuple[int, str]) -> None:
        try:
            await trio.sleep(RETRY_REFUSED)
            if not sock.closed:
                with contextlib.suppress(trio.BrokenResourceError):
                    sock.disconnect(endpoint)
                sock.connect(endpoint, self._server_key(endpoint))
        finally:
            self._retrying.discard(key)

    # Publishing -------------------------------------------------------------------------------

    def publish(self, message: bytes) -> None:
        """Queue one message for every subscriber of its topic (sent by :meth:`flush`)."""
        if not self._outgoing:
            self._flusher.mark(self)
        self._outgoing.append(message)

    def flush(self) -> None:
        """Send what was queued (called by the node's flusher): what went to one topic as one
        ZeroMQ message (see :func:`._wire.coalesce`)."""
        queued, self._outgoing = self._outgoing, []
        outgoing = _wire.coalesce(queued)
        self.coalesced += len(queued) - len(outgoing)
        pub = self._pub
        if pub is None:
            self.dropped += len(outgoing)
            return
        sent = 0
        try:
            for message in outgoing:
                if pub.send_nowait(message):
                    self.published += 1
                else:
                    self.dropped += 1
                sent += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += len(outgoing) - sent

    def subscribe(self, topic: bytes) -> None:
        """Receive ``topic`` through the brokers of its shard (the PUB sockets upstream learn
        it from them, so what is published on it goes through those brokers only)."""
        shard = _wire.shard_of(topic, self.shards)
        for path in self._paths:
            if path.shard == shard:
                path.sub.subscribe(topic)

    def unsubscribe(self, topic: bytes) -> None:
        shard = _wire.shard_of(topic, self.shards)
        for path in self._paths:
            if path.shard == shard:
                path.sub.unsubscribe(topic)

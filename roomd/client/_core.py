"""The client's protocol state (sans-I/O): calls awaiting acks, the offline queue, rooms, RTT,
and the node's rate limit as seen from the client (:class:`Pacer`).

Nothing here does I/O or imports trio; the Trio layer (:mod:`._client`) drives these objects and
they can be tested synchronously.
"""

from __future__ import annotations

import itertools
import secrets
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any, Final, Generic, TypeVar

import attrs

from ..protocol import (
    DEFAULT_NAMESPACE,
    Ack,
    AckError,
    Event,
    LimitsInfo,
    RoomPosition,
    StreamPosition,
)
from ._errors import OfflineQueueFull

W = TypeVar("W")
RoomKey = tuple[str, str]  # (namespace, room)

RTT_GAIN: Final = 0.125  # weight of a new sample in the smoothed RTT (RFC 6298's alpha)
# The client keeps below the node's announced rate limit by this share of it: frames arrive with
# some jitter, so the node's bucket may see two frames closer together than they were sent.
PACE_SHARE: Final = 0.9


# URLs -------------------------------------------------------------------------------------------


def client_url(
    url: str, *, user: str | None = None, params: Mapping[str, str] | None = None
) -> str:
    """The WebSocket URL to connect to: ``url`` with ``user`` and ``params`` in its query.

    ``http``/``https`` URLs are accepted and become ``ws``/``wss``; an empty path becomes ``/``.

    Error handling: ``ValueError`` for a URL that is not ws, wss, http or https.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r} (expected ws://host:port/...)")
    query = dict(urllib.parse.parse_qsl(parts.query))
    if params:
        query.update(params)
    if user is not None:
        query["user"] = user
    path = parts.path or "/"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode(query), ""))


def http_url(url: str, path: str) -> str:
    """The plain HTTP URL of ``path`` on the node behind WebSocket URL ``url``."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(
        parts.scheme.lower()
    )
    if scheme is None or not parts.hostname:
        raise ValueError(f"not a roomd URL: {url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


# Outgoing frames --------------------------------------------------------------------------------


class CmidSource:
    """Client message ids: a random prefix per client and a counter (``k3F9a-17``)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else secrets.token_urlsafe(6)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"


@attrs.define(eq=False)
class Outgoing(Generic[W]):
    """An event on its way out: ``waiter`` is set when the caller awaits an ack (a call)."""

    event: str
    data: Any
    cmid: str
    waiter: W | None = None

    def frame(self, call_id: int | None) -> Event:
        return Event(self.event, self.data, id=call_id, cmid=self.cmid)


class OfflineQueue(Generic[W]):
    """Events emitted while disconnected, in order, at most ``maxsize``.

    Policy when full: :meth:`put` raises :class:`OfflineQueueFull` (the caller learns at once that
    its event was not queued); nothing already queued is dropped.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._items: dict[str, Outgoing[W]] = {}  # by cmid, in insertion order

    def put(self, item: Outgoing[W]) -> None:
        if len(self._items) >= self.maxsize:
            raise OfflineQueueFull(self.maxsize)
        self._items[item.cmid] = item

    def put_front(self, item: Outgoing[W]) -> None:
        """Put back an item that could not be sent (it keeps its place: first)."""
        self._items = {item.cmid: item, **self._items}

    def popleft(self) -> Outgoing[W] | None:
        if not self._items:
            return None
        cmid = next(iter(self._items))
        return self._items.pop(cmid)

    def remove(self, cmid: str) -> bool:
        """Forget a queued item (its caller gave up waiting); whether it was queued."""
        return self._items.pop(cmid, None) is not None

    def clear(self) -> list[Outgoing[W]]:
        items = list(self._items.values())
        self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Outgoing[W]]:
        return iter(list(self._items.values()))


class PendingCalls(Generic[W]):
    """Calls sent and awaiting their ack, by frame id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, W] = {}

    def open(self, waiter: W) -> int:
        """Register ``waiter``; the id to put in the event frame."""
        call_id = next(self._ids)
        self._waiting[call_id] = waiter
        return call_id

    def resolve(self, call_id: int) -> W | None:
        """The waiter of ``call_id`` (now forgotten), or ``None`` if no one waits for it."""
        return self._waiting.pop(call_id, None)

    def discard(self, call_id: int) -> None:
        self._waiting.pop(call_id, None)

    def fail_all(self) -> list[W]:
        """Forget every waiter (the connection is gone) and return them, oldest first."""
        waiters = list(self._waiting.values())
        self._waiting.clear()
        return waiters

    def __len__(self) -> int:
        return len(self._waiting)


def ack_result(ack: Ack) -> Any:
    """The result of an ack, or :class:`AckError` with the node's code and message."""
    if ack.error is not None:
        raise AckError(ack.error.code, ack.error.message)
    return ack.result


# Rate ------------------------------------------------------------------------------------------


class Pacer:
    """The node's rate limit kept from the client's side: a token bucket of ``rate`` tokens a
    second holding at most ``burst``, one token a frame.

    :meth:`reserve` takes a token at once, even one the bucket does not hold yet (the bucket goes
    into debt, so reservations queue up in order), and says how long to wait before sending.
    Frames that must not wait (pings, answers to the node's requests) reserve too and ignore the
    delay: they count, as they do on the node.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float, spent: int = 0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("pacer: need rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst - spent
        self._stamp = now

    @classmethod
    def from_limits(cls, limits: LimitsInfo, now: float, spent: int = 0) -> Pacer | None:
        """A pacer keeping :data:`PACE_SHARE` of a welcome's limits (``None``: no usable limit).

        ``spent`` counts the frames the node has already seen on this connection (the hello).
        """
        if limits.rate <= 0 or limits.burst < 1:
            return None
        return cls(limits.rate * PACE_SHARE, max(1.0, limits.burst * PACE_SHARE), now, spent)

    def reserve(self, now: float) -> float:
        """Take a token; the seconds to wait before the frame may be sent (0: at once)."""
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    @property
    def tokens(self) -> float:
        """Tokens left as of the last reservation (negative: frames are waiting for their turn)."""
        return self._tokens


# Rooms ------------------------------------------------------------------------------------------


class RoomSet:
    """The rooms this client is in, learnt from the acks of ``room.join`` and ``room.leave``,
    and its position in each room's stream (from the join's ack, then from each push)."""

    def __init__(self) -> None:
        # ordered: re-joined in the order joined
        self._rooms: dict[RoomKey, StreamPosition | None] = {}

    def observe(self, event: str, data: Any, result: Any) -> None:
        """Update from an acknowledged built-in event (anything else is ignored)."""
        if event not in ("room.join", "room.leave"):
            return
        key = _room_key(result) or _room_key(data)
        if key is None:
            return
        if event == "room.join":
            position = _position(result)
            if position is not None or key not in self._rooms:
                known = self._rooms.get(key)
                if known is None or position is None or position.offset >= known.offset:
                    self._rooms[key] = position
        else:
            self._rooms.pop(key, None)

    def saw(self, key: RoomKey, epoch: str, offset: int) -> None:
        """A push of the room's stream arrived."""
        if key in self._rooms:
            self._rooms[key] = StreamPosition(epoch, offset)

    def positions(self) -> list[RoomPosition]:
        """Where the client is in each room's stream (for a resume)."""
        return [
            RoomPosition(ns, room, at.epoch, at.offset)
            for (ns, room), at in self._rooms.items()
            if at is not None
        ]

    def discard(self, key: RoomKey) -> None:
        self._rooms.pop(key, None)

    def __iter__(self) -> Iterator[RoomKey]:
        return iter(list(self._rooms))

    def __contains__(self, key: object) -> bool:
        return key in self._rooms

    def __len__(self) -> int:
        return len(self._rooms)


def _position(value: Any) -> StreamPosition | None:
    if isinstance(value, dict):
        epoch, offset = value.get("epoch"), value.get("offset")
        if isinstance(epoch, str) and type(offset) is int:
            return StreamPosition(epoch, offset)
    return None


def _room_key(value: Any) -> RoomKey | None:
    if not isinstance(value, dict):
        return None
    room, ns = value.get("room"), value.get("ns", DEFAULT_NAMESPACE)
    if isinstance(room, str) and isinstance(ns, str):
        return (ns, room)
    return None


# Round-trip time --------------------------------------------------------------------------------


class Rtt:
    """Round-trip times of heartbeat pings: the latest sample and an exponentially smoothed one.

    Both are ``None`` until the first pong.
    """

    __slots__ = ("latest", "samples", "smoothed")

    def __init__(self) -> None:
        self.latest: float | None = None
        self.smoothed: float | None = None
        self.samples = 0

    def update(self, sample: float) -> None:
        sample = max(0.0, sample)
        self.latest = sample
        self.samples += 1
        if self.smoothed is None:
            self.smoothed = sample
        else:
            self.smoothed += RTT_GAIN * (sample - self.smoothed)

    def __repr__(self) -> str:
        return f"Rtt(latest={self.latest!r}, smoothed={self.smoothed!r}, samples={self.samples})"


# Lifecycle events --------------------------------------------------------------------------------


class Lifecycle:
    """Names of the client's own events (``client.on(Lifecycle.CLOSE, ...)``).

    They start with ``$``, which keeps them apart from the node's push events.
    """

    OPEN: Final = "$open"  # -> Opened
    CLOSE: Final = "$close"  # -> Closed
    RECONNECTING: Final = "$reconnecting"  # -> Reconnecting
    GAVE_UP: Final = "$gave_up"  # -> GaveUp
    RTT: Final = "$rtt"  # -> Rtt sample: RttSample
    ERROR: Final = "$error"  # -> ProtocolProblem (an error frame not tied to a call)
    EMIT_FAILED: Final = "$emit_failed"  # -> EmitFailed (a queued emit that was not handled)


ANY_PUSH: Final = "*"  # subscribe to every push from the node


@attrs.frozen
class Opened:
    """The connection is open (after the welcome, re-joins and the offline flush)."""

    session: str
    node: str
    user: str
    resumed: bool
    reconnect: bool  # false for the first connection
    rejoined: tuple[RoomKey, ...] = ()
    rejoin_failed: tuple[RoomKey, ...] = ()
    flushed: int = 0  # offline frames sent
    replayed: int = 0  # pushes the session missed, replayed after the welcome (resumed)
    resent: int = 0  # calls not acknowledged before the drop, sent again (resumed)
    reason: str | None = None  # why the node did not resume the session (resumed is false)
    gaps: tuple[RoomKey, ...] = ()  # rooms whose missed messages were no longer held
    inbox_gap: bool = False  # the same for the user's inbox


@attrs.frozen
class Closed:
    """The connection closed. ``local`` when the code is the client's own verdict (1006 for a
    dropped connection, 4004 for a missed pong ...) rather than a close frame from the node."""

    code: int | None
    reason: str
    reconnect: bool  # whether the client will try again
    local: bool = False


@attrs.frozen
class Reconnecting:
    attempt: int
    delay: float


@attrs.frozen
class GaveUp:
    attempts: int
    code: int | None
    reason: str


@attrs.frozen
class RttSample:
    latest: float
    smoothed: float


@attrs.frozen
class ProtocolProblem:
    """An ``error`` frame from the node, or a frame the client could not decode."""

    code: str
    message: str


@attrs.frozen
class EmitFailed:
    """An emit that waited in the offline queue and was not handled: the node refused it
    (``code`` is the node's), the connection dropped before its ack (``connection_lost``), or the
    client closed before it could be sent (``closed``). Its caller had already returned."""

    event: str
    data: Any
    cmid: str
    code: str
    message: str

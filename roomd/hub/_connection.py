"""A connection as the hub sees it: a session bound to an outlet, and the rooms it has joined."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..protocol import PushTemplate, ServerFrame, Session, encode_frame
from ..ws import Deflater, frame

RoomKey = tuple[str, str]  # (namespace, room)

NO_ROOMS: set[RoomKey] = frozenset()  # type: ignore[assignment]  # shared, never mutated


class Outlet(Protocol):
    """Where a connection's frames go (the WebSocket transport, or a test double)."""

    def send_frame(self, frame: bytes, volatile: bool = False) -> bool:
        """Queue a complete WebSocket frame; ``False`` if it was dropped."""
        ...

    def close(self, code: int, reason: str | None = None, *, discard: bool = False) -> None:
        """Start closing with ``code``; ``discard`` drops what is still queued."""
        ...

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in a task that lives no longer than the connection."""
        ...

    def pause_reading(self) -> None:
        """Read nothing more from the client until :meth:`resume_reading` (its frames wait in
        the kernel's buffers, and then the client's: TCP's flow control)."""
        ...

    def resume_reading(self) -> None: ...


class RateLimiter:
    """Token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    Each refused frame adds a strike and strikes fade at one a second, so a client that keeps
    sending over the rate (even slightly) accumulates them, while an occasional refusal does not.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_strikes", "_struck", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now
        self._strikes = 0.0
        self._struck = now

    def take(self, now: float) -> bool:
        tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        self._strikes = max(0.0, self._strikes - (now - self._struck)) + 1.0
        self._struck = now
        return False

    @property
    def strikes(self) -> float:
        """Strikes as of the last refusal."""
        return self._strikes


class Connection:
    """One client connection to this node: its session, its outlet, the rooms it is in.

    Resource handling: owns nothing that needs closing; the transport that created it owns the
    connection. Pending server-to-client requests live in ``pending`` (id -> waiter).
    """

    __slots__ = (
        "_claims",
        "binary",
        "deflate",
        "events",
        "handshake_deadline",
        "held",
        "inflight",
        "limiter",
        "outlet",
        "pending",
        "rooms",
        "session",
        "waiting",
    )

    def __init__(
        self,
        session: Session,
        outlet: Outlet,
        limiter: RateLimiter,
        handshake_deadline: float,
        claims: dict[str, Any] | None = None,
        deflate: Deflater | None = None,
    ) -> None:
        self.session = session
        self.outlet = outlet
        self.limiter = limiter
        self.handshake_deadline = handshake_deadline
        self._claims = claims or None  # most clients have none: no empty dict each
        self.binary = False  # msgpack when the hello came in a binary frame
        self.deflate = deflate  # permessage-deflate, when the client negotiated it
        self.rooms: set[RoomKey] = NO_ROOMS  # a set of its own from the first join
        self.pending: dict[int, Any] = {}  # (an empty dict costs 64 bytes: cheap enough)
        self.events: Any = None  # send side of the event worker's queue, once it runs
        self.inflight = 0  # events queued for or being handled by the worker
        self.waiting = 0  # built-in events waiting for the cluster (see max_waiting_events)
        self.held: list[PushTemplate] | None = None  # pushes held while a resume catches up

    @property
    def claims(self) -> dict[str, Any]:
        """The token's claims beyond ``sub``, ``iat`` and ``exp`` (the application's own)."""
        return self._claims if self._claims is not None else {}

    @property
    def user(self) -> str:
        return self.session.user

    @property
    def id(self) -> str:
        return self.session.id

    def send(self, message: ServerFrame) -> bool:
        """Encode and queue a frame for this client alone."""
        payload = encode_frame(message, self.binary)
        if self.deflate is not None:
            return self.outlet.send_frame(self.deflate.message(payload, self.binary))
        return self.outlet.send_frame(frame(payload, self.binary))

    def hold(self) -> None:
        """Hold pushes (not other frames) until :meth:`release`: a resuming session is sent
        what it missed first."""
        self.held = []

    def release(self, replayed: dict[str, int]) -> int:
        """Send the pushes held, but those of a stream already replayed up to their offset
        (``replayed``: stream -> last offset sent); how many went out."""
        held, self.held = self.held or [], None
        sent = 0
        for template in held:
            stream, offset = template.stream, template.offset
            if stream is not None and offset is not None and offset <= replayed.get(stream, 0):
                continue
            sent += self.send_push(template)
        return sent

    def push(self, template: PushTemplate) -> bool:
        """Queue a push, numbered with the session's next ``seq`` unless it is volatile (or
        hold it, while held)."""
        if self.held is not None:
            if not template.volatile:
                self.held.append(template)
            return True
        return self.send_push(template)

    def send_push(self, template: PushTemplate) -> bool:
        """Queue a push now, held or not.

        Compressed, the push's shared part is deflated once per message (kept with the
        template) and only the head with the ``seq`` is added per recipient.
        """
        seq = None if template.volatile else self.session.next_seq()
        deflater = self.deflate
        if deflater is not None:
            shared = template.shared(self.binary, deflater, deflater.shared)
            if shared is not None:
                data = deflater.frame(template.head(seq, self.binary), shared, self.binary)
                return self.outlet.send_frame(data, template.volatile)
        payload = template.render(seq, self.binary)
        return self.outlet.send_frame(frame(payload, self.binary), template.volatile)

    def close(self, code: int, reason: str | None = None) -> None:
        self.outlet.close(code, reason)

    def __repr__(self) -> str:
        return f"<Connection {self.user}/{self.id}>"

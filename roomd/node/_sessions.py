"""Sessions that outlive their connections: resume tokens, detached sessions, resuming.

A session whose connection drops without the client closing it is *detached*, not ended: it
keeps its rooms (other members see no leave), its user stays online, and for
``sessions.resume_window`` seconds a new connection may take it over with its resume token and
its positions in the streams it follows. What it missed comes from the streams' logs (rooms,
inbox), on this node or any other: a session can resume anywhere, also after the node that held
it died. See docs/sessions.md.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import attrs
import orjson
import trio

from ..cluster import (
    CLOCK_SLACK,
    ClusterLink,
    Gap,
    Position,
    StreamService,
    room_stream,
    user_stream,
    with_position,
)
from ..hub import Connection, Hub, RoomKey
from ..protocol import (
    CloseCode,
    PushTemplate,
    ResumeRequest,
    RoomdError,
    RoomRef,
    should_reconnect,
)
from ._router import Router

log = logging.getLogger("roomd.node")

# How long a resume waits for a node that cannot hear the cluster (its bus is down, or it was
# just woken from a freeze) to hear it again and catch up, before it reads the streams anyway.
SYNC_WAIT = 3.0

_TOKEN_CONTEXT: Final = b"roomd resume token v1"
REMEMBER_EXPIRED: Final = 10_000  # ids of sessions that expired here, to say so
REMEMBER_HANDED: Final = 10_000  # sessions handed to another node, to answer a claim made again
CLAIM: Final = "roomd.session-claim"  # cluster call: hand a session over to the caller
# Seconds a node keeps a session it handed over in its presence: the new node's announcement
# comes first, so other members see no leave and join again.
HANDOVER_DELAY: Final = 0.1
# Nodes in development mode without a secret sign resume tokens with this key (any client could
# forge them: development only, as ?user=NAME is).
DEV_TOKEN_KEY: Final = "roomd development mode: resume tokens are not secret"


class ResumeRefused(Exception):
    """A resume that cannot go on; ``reason`` is what the welcome says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reason:
    """Why a resume was refused (``welcome.reason``)."""

    INVALID_TOKEN: Final = "invalid_token"  # forged, another user's, or for another session
    EXPIRED: Final = "expired"  # the resume window passed
    UNKNOWN_SESSION: Final = "unknown_session"  # it ended (closed by its client, kicked ...)


@attrs.frozen
class TokenClaims:
    session: str
    user: str
    node: str  # where the session was when the token was issued
    issued: float  # wall-clock time
    epoch: int | None = None  # the life of that node (a node that restarts is a new life)
    began: float = 0.0  # wall-clock time of the session's first welcome (``issued`` if unsaid)


class ResumeTokens:
    """Resume tokens any node of the cluster can check: signed (HMAC-SHA256) with a key derived
    from the nodes' shared secret, so a node that never saw the session (it resumes there after
    its node died) can still trust one."""

    def __init__(self, secret: str) -> None:
        key = hmac.new(secret.encode(), _TOKEN_CONTEXT, hashlib.sha256).digest()
        # Keyed once; each signature copies it (a new HMAC hashes the key's pads every time).
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def issue(
        self, session: str, user: str, node: str, epoch: int | None, began: float | None = None
    ) -> str:
        """A token for ``session``, held by ``node`` in its life ``epoch``, which began at
        ``began`` (now, if not given: a new session)."""
        now = round(time.time(), 3)
        claims: list[Any] = [session, user, node, now, epoch, now if began is None else began]
        payload = orjson.dumps(claims)
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def check(self, token: str, session: str, user: str) -> TokenClaims:
        """The token's claims. Error handling: :class:`ResumeRefused` (``invalid_token``) for a
        token that is malformed, forged, or for another session or user."""
        try:
            head, _, signature = token.partition(".")
            payload = _unb64(head)
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                raise ValueError("bad signature")
            sid, owner, node, issued, *rest = orjson.loads(payload)
            epoch = int(rest[0]) if rest and rest[0] is not None else None
            began = float(rest[1]) if len(rest) > 1 else float(issued)  # (an earlier version)
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise ResumeRefused(Reason.INVALID_TOKEN) from None
        if sid != session or owner != user:
            raise ResumeRefused(Reason.INVALID_TOKEN)
        return TokenClaims(sid, owner, node, float(issued), epoch, began)

    def _sign(self, payload: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(payload)
        return mac.digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def detaches(close_code: int | None) -> bool:
    """Whether a connection that ended with ``close_code`` leaves its session resumable: it
    vanished (no close frame), or ended with a code that asks the client to reconnect. A
    client that closes on purpose, a kick, a protocol violation end it; so does the node
    going away (its sessions resume elsewhere, from the streams)."""
    if close_code is None:
        return True
    return close_code != CloseCode.GOING_AWAY and should_reconnect(close_code)


@attrs.define
class Outcome:
    """What a resume found: the pushes to replay (after the welcome), the last offset each
    stream is replayed up to (the client's position, if nothing was missed), and the streams
    whose missed messages are no longer held."""

    pushes: list[PushTemplate] = attrs.field(factory=list)
    offsets: dict[str, int] = attrs.field(factory=dict)
    gaps: list[RoomRef] = attrs.field(factory=list)
    inbox_gap: bool = False
    since: float = 0.0  # (wall-clock) nothing older is missed by a position of no epoch


class Sessions:
    """The sessions of one node that outlived their connection, and resuming."""

    def __init__(
        self,
        name: str,
        hub: Hub,
        router: Router,
        streams: StreamService,
        tokens: ResumeTokens,
        window: float,
        ended: Callable[[Connection], None],
        cluster: ClusterLink,
        notice: float,
        epoch: int | None = None,
    ) -> None:
        self.name = name
        self.epoch = epoch  # this node's life, named in the tokens it issues
        self.cluster = cluster
        self.notice = notice  # seconds the cluster may take to declare a dead node down
        self._moving: set[Connection] = set()
        self._spawn: Callable[..., None] = _not_running
        cluster.calls.handlers[CLAIM] = self.on_claim
        self.hub = hub
        self.router = router
        self.streams = streams
        self.tokens = tokens
        self.window = window
        self._ended = ended  # takes a session out of the hub and the presence for good
        self._detached: dict[str, tuple[Connection, float]] = {}  # session id -> (conn, since)
        self._expired: collections.OrderedDict[str, None] = collections.OrderedDict()
        # session id -> (the node it was handed to, what it carried): a claim made again (its
        # first answer was late) gets the same answer
        self._handed: collections.OrderedDict[str, tuple[str, list[list[Any]]]] = (
            collections.OrderedDict()
        )

    @property
    def detached_count(self) -> int:
        return len(self._detached)

    # Detaching -----------------------------------------------------------------------------------

    def start(self, spawn: Callable[..., None]) -> None:
        """Run tasks (handovers) with ``spawn`` (the node's nursery's ``start_soon``)."""
        self._spawn = spawn

    def detach(self, conn: Connection) -> None:
        """Keep ``conn``'s session for the resume window (its connection is gone)."""
        conn.outlet = DETACHED
        self._detached[conn.id] = (conn, trio.current_time())

    def expire(self, now: float) -> None:
        """End the sessions detached longer than the window."""
        for sid, (conn, since) in list(self._detached.items()):
            if now - since > self.window:
                del self._detached[sid]
                log.debug("%s: session %s of %s expired", self.name, sid, conn.user)
                self._expired[sid] = None
                if len(self._expired) > REMEMBER_EXPIRED:
                    self._expired.popitem(last=False)
                self._ended(conn)

    def end_all(self) -> None:
        """End every detached session (the node stops)."""
        for conn, _ in list(self._detached.values()):
            self._ended(conn)
        self._detached.clear()

    # Resuming ------------------------------------------------------------------------------------

    def token_for(self, session: str, user: str, began: float | None = None) -> str:
        """A resume token for ``session``, naming this node and its life, and when the session
        began (now, if not given: a new session)."""
        return self.tokens.issue(session, user, self.name, self.epoch, began)

    async def take(self, conn: Connection, request: ResumeRequest) -> None:
        """Let ``conn`` continue the session ``request`` names: held here (detached, or still
        attached to an older connection, closed with 4012), held by the node that issued its
        token (which hands it over), or lost with that node (it continues from the streams).

        Error handling: :class:`ResumeRefused`.
        """
        claims = self.tokens.check(request.token, request.session, conn.user)
        if not await self.cluster.wait_synced(SYNC_WAIT):
            log.warning("%s: resuming %s before the node caught up", self.name, request.session)
        if self._take_here(conn, request):
            return
        home = claims.node
        if self._another_life(claims):
            carried = []  # its node restarted since: what that life carried went with it
        elif home != self.name and self.cluster.is_up(home):
            carried = await self._claim(home, request.session, conn.user, claims.epoch)
        else:
            gone = self.cluster.gone_since(home) if home != self.name else None
            if home == self.name or (gone is not None and time.time() - gone > self.window):
                expired = home != self.name or request.session in self._expired
                raise ResumeRefused(Reason.EXPIRED if expired else Reason.UNKNOWN_SESSION)
            carried = []  # its node is gone: what it carried is lost, the streams are not
        conn.session.continue_remote(request.session, request.seq, carried)
        self.router.opened(conn)

    def _another_life(self, claims: TokenClaims) -> bool:
        """Whether the node that issued the token is up in a later life (it was killed and
        started again, as fast as it likes): the session is not held there, and continues
        from the streams, as after a crash. Error handling: :class:`ResumeRefused`
        (``expired``) when that life began longer than the resume window ago."""
        life = self.cluster.life(claims.node)
        if claims.epoch is None or life is None or life[0] == claims.epoch:
            return False
        if time.time() - life[1] > self.window:
            raise ResumeRefused(Reason.EXPIRED)
        return True

    def _take_here(self, conn: Connection, request: ResumeRequest) -> bool:
        held = self._detached.pop(request.session, None)
        old = held[0] if held is not None else self.hub.connections.get(request.session)
        if old is None or old.user != conn.user:
            return False
        if held is None:
            old.close(CloseCode.REPLACED)
        conn.session.continue_from(old.session, request.seq)
        self.hub.replace(old, conn)
        for waiter in old.pending.values():
            waiter.event.set()
        return True

    async def _claim(
        self, home: str, session: str, user: str, epoch: int | None
    ) -> list[list[Any]]:
        """What ``home`` carried of the session it hands over. A home that does not answer may
        have just died (its client came back first): it is asked again until it answers or is
        declared down, for at most the time the cluster takes to notice a dead node; then the
        session continues from the streams (what the home carried, its window of answers by
        ``cmid``, is lost with it).

        Error handling: :class:`ResumeRefused`."""

        calls = self.cluster.calls
        per_try = self.notice / 4  # (a heartbeat interval, at the default three misses)

        async def ask() -> Any:
            body = [session, user] if epoch is None else [session, user, epoch]
            out = await calls.call(CLAIM, body, targets=[home], timeout=per_try)
            return out.replies.get(home)

        # Asked again every ``per_try`` (a claim is answered the same each time): a dead home
        # is given up as soon as it is declared down, not after a whole call timeout.
        answer = None
        with trio.move_on_after(self.notice + calls.timeout):
            while answer is None:
                answer = await ask()
                if answer is None and not self.cluster.is_up(home):
                    break
        if answer is None:  # down, or up and silent (frozen): the streams hold the rest
            log.warning("%s: %s did not hand session %s over", self.name, home, session)
            return []
        if answer.get("another_life"):  # it restarted since (this node did not know yet)
            return []
        if not answer["found"]:
            raise ResumeRefused(Reason.EXPIRED if answer["expired"] else Reason.UNKNOWN_SESSION)
        carried: list[list[Any]] = answer["carried"]
        return carried

    async def on_claim(self, body: Any, origin: str) -> dict[str, Any]:
        """Another node resumes one of this node's sessions: hand it over (its connection, if
        still open, is closed with 4012). Its presence here ends a moment later, once the
        other node has announced it (so that nobody sees it leave and come back)."""
        session, user, *life = body
        if life and self.epoch is not None and life[0] != self.epoch:
            return {"found": False, "expired": False, "another_life": True}
        handed = self._handed.get(session)
        if handed is not None and handed[0] == origin:
            return {"found": True, "expired": False, "carried": handed[1]}
        held = self._detached.pop(session, None)
        conn = held[0] if held is not None else self.hub.connections.get(session)
        if conn is None or conn.user != user or conn in self._moving:  # (handed to another)
            return {"found": False, "expired": session in self._expired}
        carried = conn.session.carried()
        self._handed[session] = (origin, carried)
        if len(self._handed) > REMEMBER_HANDED:
            self._handed.popitem(last=False)
        self._moving.add(conn)
        if held is None:
            conn.close(CloseCode.REPLACED)
        self._spawn(self._end_later, conn)
        return {"found": True, "expired": False, "carried": carried}

    def moving(self, conn: Connection) -> bool:
        """Whether ``conn``'s session is being handed to another node (it ends by itself)."""
        return conn in self._moving

    async def _end_later(self, conn: Connection) -> None:
        await trio.sleep(HANDOVER_DELAY)
        self._moving.discard(conn)
        self._ended(conn)

    async def replay(self, conn: Connection, request: ResumeRequest) -> Outcome:
        """What ``conn``'s session missed in each stream it follows, from the position the
        client reports there (rooms it is not in any more are joined again). A position taken
        before the stream numbered anything (an empty epoch) is read from its start, but
        nothing sequenced before the session began (its first welcome, less
        :data:`CLOCK_SLACK`) counts as missed: not before its last welcome, since a session
        that resumed without receiving anything of a stream still holds that position, and
        what was numbered around a resume may not have reached it."""
        began = self.tokens.check(request.token, request.session, conn.user).began
        conn.session.began = began
        since = began - CLOCK_SLACK
        outcome = Outcome(since=since)
        for position in request.rooms or ():
            key: RoomKey = (position.ns, position.room)
            if key not in conn.rooms:
                self.router.join(conn, key)
            at = Position(position.epoch, position.offset)
            if not await self._missed(conn, room_stream(*key), at, outcome):
                outcome.gaps.append(RoomRef(*key))
        if request.inbox is not None:
            at = Position(request.inbox.epoch, request.inbox.offset)
            outcome.inbox_gap = not await self._missed(conn, user_stream(conn.user), at, outcome)
        return outcome

    async def _missed(self, conn: Connection, stream: str, at: Position, outcome: Outcome) -> bool:
        try:
            entries = await self.streams.read(stream, at)
        except RoomdError as exc:  # no longer held (Gap), or its sequencer did not answer
            if not isinstance(exc, Gap):
                log.warning("%s: cannot read %r for a resume: %s", self.name, stream, exc)
            return False
        self.streams.follow(stream, at)
        # The client holds the stream up to its position: what reaches the session while it
        # is held, up to there, is not sent again (a sequencer taking the stream over for this
        # very read delivers what it gathered to its members here, this session among them).
        outcome.offsets[stream] = at.offset
        self.streams.absorb(stream, entries)
        for entry in entries:
            outcome.offsets[stream] = entry.offset
            if entry.except_session == conn.id or entry.skip_user == conn.user:
                continue
            if not at.epoch and entry.stamp < outcome.since:
                continue
            body = with_position(entry.body, entry.epoch, entry.offset)
            outcome.pushes.append(PushTemplate(body, stream=stream, offset=entry.offset))
        return True


def _not_running(*args: Any) -> None:
    raise RuntimeError("the node is not running")


class _Detached:
    """The outlet of a detached session: nothing is written (what it misses of its streams is
    in their logs, and replayed when it resumes)."""

    def send_frame(self, frame: bytes, volatile: bool = False) -> bool:
        return False

    def close(self, code: int, reason: str | None = None, *, discard: bool = False) -> None:
        pass

    def spawn(self, fn: Any, *args: Any) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


DETACHED: Final = _Detached()

"""A driver user's session that outlives its connections, kept as the Trio client keeps it.

The load generator (:mod:`._engine`) serves hundreds of connections on one epoll loop, where
the Trio client (:class:`roomd.client.Client`) would cost a task, a trio-websocket connection and
100-200 µs of CPU per message each: at W1's rate (10,000 deliveries/s) that is a core of the two
this machine has, and the figures would be the client's. So the engine resumes by itself, with
what the Trio client sends and decides (``roomd/client/_client.py``):

* the ``hello`` of a reconnect carries ``resume``: the session and ``resumeToken`` of the last
  welcome, the ``seq`` of the last push received, the position (``epoch``, ``offset``) reached in
  the room's stream (from the ``room.join`` ack, then from each push) and in the inbox (from the
  welcome of a new session, then from each direct push);
* a resumed session is not joined again; a refused one is (and what it missed is lost: counted);
* after a drop, the delay comes from the client's own policy (:func:`roomd.client.decide`
  with the default :class:`~roomd.client.Backoff`); a ``reconnect`` frame moves it at once to the
  URL it names (its alternates join the list); a connection that could not be opened moves on to
  the next URL of the list (the node first, then the others, as ``Client(url, urls=...)``).

Nothing here does I/O: the engine calls it and reads :attr:`Session.records`.
"""

from __future__ import annotations

import random
from typing import Any, Final
from urllib.parse import urlsplit

from ..client import Backoff, Reconnect, decide

Address = tuple[str, int]
BACKOFF: Final = Backoff()  # the Trio client's default policy


def address_of(url: str) -> Address | None:
    """``(host, port)`` of a ``ws://`` URL (``None`` if it is none)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)


class Session:
    """One user's session across connections: where to connect, what to present, what
    happened at each reconnect (:attr:`records`)."""

    def __init__(self, user: str, urls: list[Address], rng: random.Random) -> None:
        self.user = user
        self.urls = urls  # the first is where it connects first
        self.current = 0  # index in urls
        self.rng = rng
        self.sid: str | None = None
        self.token: str | None = None
        self.seq = 0
        self.room: tuple[str, str, str, int] | None = None  # ns, room, epoch, offset
        self.inbox: tuple[str, int] | None = None
        self.attempt = 0
        self.move_to: Address | None = None
        self.records: list[dict[str, Any]] = []  # one per reconnect
        self._record: dict[str, Any] | None = None  # the reconnect in progress

    @property
    def address(self) -> Address:
        return self.urls[self.current]

    @property
    def reconnecting(self) -> bool:
        """Between a drop and the welcome that ends it."""
        return self._record is not None

    # What the node says ---------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """The ``hello`` frame: with ``resume`` once a welcome was received."""
        frame: dict[str, Any] = {"type": "hello", "v": 1, "client": "roomd-bench"}
        if self.sid is not None and self.token is not None:
            resume: dict[str, Any] = {"session": self.sid, "token": self.token, "seq": self.seq}
            if self.room is not None:
                ns, room, epoch, offset = self.room
                resume["rooms"] = [{"ns": ns, "room": room, "epoch": epoch, "offset": offset}]
            if self.inbox is not None:
                resume["inbox"] = {"epoch": self.inbox[0], "offset": self.inbox[1]}
            frame["resume"] = resume
        return frame

    def welcomed(self, welcome: dict[str, Any], now: int) -> bool:
        """A welcome arrived; whether it continued the session (then no join follows)."""
        resumed = bool(welcome.get("resumed"))
        self.sid, self.token = welcome.get("session"), welcome.get("resumeToken")
        if not resumed:
            self.seq = int(welcome.get("seq", 0))
            inbox = welcome.get("inbox")
            self.inbox = (inbox["epoch"], inbox["offset"]) if isinstance(inbox, dict) else None
            self.room = None  # known again from the join's ack
        record = self._record
        if record is not None:
            record.update(
                welcome_ns=now,
                resumed=resumed,
                reason=welcome.get("reason"),
                replayed=int(welcome.get("replayed", 0)),
                node=welcome.get("node"),
                gaps=len(welcome.get("gaps") or ()) + bool(welcome.get("inboxGap")),
            )
            if not record["replayed"]:
                self.replay_done(now)
        return resumed

    def joined(self, ns: str, room: str, result: Any) -> None:
        """The ``room.join`` ack: the position in the room's stream."""
        if isinstance(result, dict) and isinstance(result.get("epoch"), str):
            offset = result.get("offset")
            if type(offset) is int:
                self.room = (ns, room, result["epoch"], offset)

    def saw(self, push: dict[str, Any]) -> None:
        """A push arrived: its ``seq``, and its position in its stream."""
        seq = push.get("seq")
        if type(seq) is int:
            self.seq = seq
        epoch, offset = push.get("epoch"), push.get("offset")
        if not isinstance(epoch, str) or type(offset) is not int:
            return
        room = push.get("room")
        if isinstance(room, dict):
            if self.room is not None and (room.get("ns"), room.get("room")) == self.room[:2]:
                self.room = (self.room[0], self.room[1], epoch, offset)
        else:
            self.inbox = (epoch, offset)

    def replay_done(self, now: int) -> None:
        """The last replayed push arrived (or none was due): this reconnect is over."""
        if self._record is not None:
            self._record["replay_done_ns"] = now
            self.records.append(self._record)
            self._record = None

    # Reconnecting ---------------------------------------------------------------------------------

    def moved(self, url: str, alternates: list[str]) -> None:
        """A ``reconnect`` frame: resume at ``url`` now (its alternates join the list)."""
        for alternate in alternates:
            address = address_of(alternate)
            if address is not None and address not in self.urls:
                self.urls.append(address)
        self.move_to = address_of(url)

    def dropped(self, code: int | None, opened: bool, now: int, *, cause: str) -> float | None:
        """The connection ended (``opened``: it had been welcomed); seconds until the next
        attempt, or ``None`` when the client would not reconnect (a terminal close code)."""
        if self._record is None:
            self._record = {"user": self.user, "cause": cause, "dropped_ns": now, "attempts": 0}
            self._record["from"] = _text(self.address)
        if opened:
            self.attempt = 0
        decision = decide(code, self.attempt + 1, BACKOFF, self.rng.random)
        if not isinstance(decision, Reconnect):
            self._record["gave_up"] = f"close code {code}"
            self.records.append(self._record)
            self._record = None
            return None
        self.attempt, delay = decision.attempt, decision.delay
        if self.move_to is not None:
            self.go_to(self.move_to)
            self.move_to, self.attempt, delay = None, 0, 0.0
        elif not opened and len(self.urls) > 1:
            self.current = (self.current + 1) % len(self.urls)
        return delay

    def go_to(self, address: Address) -> None:
        if address not in self.urls:
            self.urls.append(address)
        self.current = self.urls.index(address)

    def dropped_on_purpose(self, now: int, address: Address, cause: str) -> None:
        """The workload cut the connection itself and picked where it resumes."""
        self._record = {"user": self.user, "cause": cause, "dropped_ns": now, "attempts": 0}
        self._record["from"] = _text(self.address)
        self.go_to(address)

    def connecting(self, now: int) -> None:
        """A new connection starts (to :attr:`address`)."""
        if self._record is not None:
            self._record["attempts"] += 1
            self._record["connect_ns"] = now
            self._record["to"] = _text(self.address)


def _text(address: Address) -> str:
    return f"{address[0]}:{address[1]}"

"""The fault workloads' client process: ``python -m roomd.bench._clients``.

Here the clients are the Trio client itself (:class:`roomd.client.Client`, given every node's
URL), the one applications use: the fault workloads' traffic is light (40 users, 20 room
messages and 20 direct messages a second, 800 deliveries a second), so its cost per message does
not matter, and what is measured is what an application sees, the library's own resuming, its
sending again of unacknowledged calls and its failing over to another node included. (The
session workloads drive W1's load, 10,000 deliveries a second, and use the load generator's
engine instead: see :mod:`._resume`.)

It speaks the driver's protocol: one JSON command per line on stdin, one JSON answer per line
on stdout. With ``--drivers N`` the users are shared among N such processes; what a message is
owed is then known only to the orchestrator, which tells each process (``collect``).

``open``     start one client per user (``users``: ``[user, url]``; ``urls``: every node;
             ``heartbeat_interval``, ``heartbeat_timeout``, ``call_timeout``: the client's,
             the rest at its defaults), each joins ``room``; answered once all are in it
``start``    each user of ``schedule`` (``[user, peer, offset]``) sends a room message every
             ``room_every`` seconds and a direct message to ``peer`` every ``dm_every``
             seconds, from ``offset`` (a fraction of the period) on
``stop``     stop sending; answered once every call in flight has its answer (or gave up),
             with what was acknowledged (``acked``: ``[text, addressee or None]``)
``collect``  wait (at most ``timeout`` seconds) until every acknowledged message (``expect``:
             the ``acked`` of every client process) reached every recipient here, ``grace``
             seconds more; everything sent, received and seen, and each member's ``view`` of
             the room then (``room.members``, asked within ``views_timeout`` seconds: a view
             not had by then is ``None``)
``quit``     close the clients and exit

Times are ``time.monotonic_ns()``, comparable with the orchestrator's.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio

from ..client import Backoff, Client, Closed, Lifecycle, Opened
from ..protocol import Push
from ._commands import serve_commands

PUSHES: Final = 100_000  # a client's subscription: never full in a run
VIEWS_AT_ONCE: Final = 50  # room.members calls in flight at the end
VIEWS_S: Final = 10.0  # seconds they may take, unless the orchestrator says


@attrs.define
class Member:
    """One user: its client and what it saw."""

    name: str
    client: Client
    deliveries: list[list[Any]] = attrs.field(factory=list)  # [text, arrival_ns, kind]
    presence: list[list[Any]] = attrs.field(factory=list)  # [event, user, arrival_ns]
    opens: list[dict[str, Any]] = attrs.field(factory=list)
    closes: list[list[Any]] = attrs.field(factory=list)  # [code, arrival_ns]

    def opened(self, opened: Opened) -> None:
        self.opens.append(_opened(opened))

    def closed(self, closed: Closed) -> None:
        self.closes.append([closed.code, time.monotonic_ns()])


@attrs.define
class Sent:
    text: str
    sender: str
    to: str | None  # the addressee of a direct message; None for the room
    sent_ns: int
    acked_ns: int = 0
    failed: str | None = None


class Clients:
    """The users of one client process and their traffic."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.members: list[Member] = []
        self.sent: list[Sent] = []
        self.room = "faults"
        self._stop = trio.Event()
        self._senders = 0
        self._senders_done = trio.Event()
        self._progress = trio.Event()
        self.commands: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "open": self.open,
            "start": self.start,
            "stop": self.stop,
            "collect": self.collect,
        }

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.commands[command["cmd"]](command)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.room = cmd["room"]
        urls: list[str] = cmd["urls"]
        with trio.fail_after(float(cmd["timeout"])):
            for user, url in cmd["users"]:
                client = Client(
                    url,
                    urls=urls,
                    user=user,
                    backoff=Backoff(),
                    heartbeat_interval=float(cmd["heartbeat_interval"]),
                    heartbeat_timeout=float(cmd["heartbeat_timeout"]),
                    call_timeout=float(cmd["call_timeout"]),
                )
                member = Member(user, client)
                client.on(Lifecycle.OPEN, member.opened)
                client.on(Lifecycle.CLOSE, member.closed)
                await self.nursery.start(client.run)
                self.nursery.start_soon(self._receive, member)
                self.members.append(member)
            for member in self.members:
                await member.client.join(self.room)
        return {"opened": len(self.members)}

    async def _receive(self, member: Member) -> None:
        with member.client.subscribe("*", size=PUSHES) as pushes:
            async for push in pushes:
                now = time.monotonic_ns()
                if push.event == "message":
                    kind = "room" if push.room is not None else "dm"
                    member.deliveries.append([_text(push), now, kind])
                    self._progress.set()
                elif push.event in ("room.left", "room.joined") and isinstance(push.data, dict):
                    member.presence.append([push.event, push.data.get("user"), now])

    async def start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        room_every, dm_every = float(cmd["room_every"]), float(cmd["dm_every"])
        by_name = {m.name: m for m in self.members}
        for user, peer, offset in cmd["schedule"]:
            member = by_name[user]
            self._spawn(member, None, room_every, offset * room_every)
            self._spawn(member, peer, dm_every, (offset + 0.5) * dm_every)
        return {"started_ns": time.monotonic_ns()}

    def _spawn(self, member: Member, to: str | None, every: float, first: float) -> None:
        self._senders += 1
        self.nursery.start_soon(self._sender, member, to, every, first)

    async def _sender(self, member: Member, to: str | None, every: float, first: float) -> None:
        try:
            await self._send_every(member, to, every, first)
        finally:
            self._senders -= 1
            if not self._senders:
                self._senders_done.set()

    async def _send_every(self, member: Member, to: str | None, every: float, first: float) -> None:
        """Send at a steady pace: a call that waits long does not delay the next ones (they
        go as their time comes, each in its own task)."""
        start = trio.current_time() + first
        async with trio.open_nursery() as calls:
            k = 0
            while not self._stop.is_set():
                with trio.move_on_at(start + k * every):
                    await self._stop.wait()
                if self._stop.is_set():
                    break
                text = f"{member.name}:r{k}" if to is None else f"{member.name}>{to}:d{k}"
                calls.start_soon(self._send_one, member, to, text)
                k += 1

    async def _send_one(self, member: Member, to: str | None, text: str) -> None:
        record = Sent(text, member.name, to, time.monotonic_ns())
        self.sent.append(record)
        try:
            if to is None:
                await member.client.send_text(text, room=self.room)
            else:
                await member.client.send_text(text, user=to)
        except Exception as exc:  # not acknowledged: it may arrive or not, never twice
            record.failed = type(exc).__name__
        else:
            record.acked_ns = time.monotonic_ns()

    async def stop(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._stop.set()
        if self._senders:
            await self._senders_done.wait()
        acked = [[s.text, s.to] for s in self.sent if s.acked_ns]
        return {"sent": len(self.sent), "acked": acked}

    async def collect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until every acknowledged message (``expect``: ``[text, addressee or None]``, of
        every client process) arrived where it should here (or the timeout)."""
        started = time.monotonic_ns()
        expect = [(text, to) for text, to in cmd["expect"]]
        with trio.move_on_after(float(cmd["timeout"])) as scope:
            while not self.complete(expect):
                self._progress = trio.Event()
                await self._progress.wait()
        complete_ns = time.monotonic_ns()
        await trio.sleep(float(cmd["grace"]))
        views = await self._views(float(cmd.get("views_timeout", VIEWS_S)))
        return {
            "timed_out": scope.cancelled_caught,
            "collect_s": round((complete_ns - started) / 1e9, 3),
            "sent": [attrs.astuple(s) for s in self.sent],
            "members": [
                {
                    "user": m.name,
                    "deliveries": m.deliveries,
                    "presence": m.presence,
                    "opens": m.opens,
                    "closes": m.closes,
                    "view": views[m.name],
                }
                for m in self.members
            ],
        }

    async def _views(self, within: float) -> dict[str, list[str] | None]:
        """Who each member is told the room holds, at the end (``room.members``, asked of the
        node it is on): the state a resumed client reads again, since membership pushes are not
        replayed. ``None`` where the call failed or had no answer within ``within`` seconds
        (a process of hundreds of clients, on a saturated machine, may take that long)."""
        views: dict[str, list[str] | None] = dict.fromkeys(m.name for m in self.members)
        limiter = trio.CapacityLimiter(VIEWS_AT_ONCE)

        async def ask(member: Member) -> None:
            async with limiter:
                try:
                    listed = await member.client.members(self.room)
                except Exception:
                    views[member.name] = None
                else:
                    views[member.name] = sorted(str(m["user"]) for m in listed)

        with trio.move_on_after(within):
            async with trio.open_nursery() as nursery:
                for member in self.members:
                    nursery.start_soon(ask, member)
        return views

    def complete(self, expect: list[tuple[str, str | None]]) -> bool:
        """Whether this process's members have every message of ``expect`` owed to them: a
        room message (no addressee) to each, a direct message to its addressee if it is here."""
        got = {m.name: {d[0] for d in m.deliveries} for m in self.members}
        for text, to in expect:
            if to is None:
                if any(text not in g for g in got.values()):
                    return False
            elif to in got and text not in got[to]:
                return False
        return True

    async def aclose(self) -> None:
        self._stop.set()
        with trio.move_on_after(5):
            for member in self.members:
                await member.client.aclose()


def _opened(opened: Opened) -> dict[str, Any]:
    return {
        "at_ns": time.monotonic_ns(),
        "node": opened.node,
        "resumed": opened.resumed,
        "reconnect": opened.reconnect,
        "reason": opened.reason,
        "replayed": opened.replayed,
        "resent": opened.resent,
    }


def _text(push: Push) -> str:
    data = push.data
    if isinstance(data, dict) and isinstance(data.get("payload"), dict):
        return str(data["payload"].get("content"))
    return repr(data)


async def serve() -> None:
    async with trio.open_nursery() as nursery:
        clients = Clients(nursery)
        try:
            await serve_commands(clients.handle)
        finally:
            with trio.CancelScope(shield=True):
                await clients.aclose()
            nursery.cancel_scope.cancel()


def main() -> int:
    logging.getLogger("roomd").setLevel(logging.ERROR)  # reconnects are counted, not logged
    trio.run(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())

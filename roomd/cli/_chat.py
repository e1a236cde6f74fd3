"""``roomd chat URL --user NAME``: a line-based terminal chat on the client library.

:class:`ChatSession` is the core: it takes command lines and turns the client's events into lines
of text, and does no terminal I/O itself (so it is tested with real nodes, without a terminal).
:func:`chat_main` wires it to stdin and stdout.

Commands: ``/join ROOM``, ``/leave [ROOM]``, ``/msg USER TEXT``, ``/who``, ``/members``,
``/rooms``, ``/status [STATUS [TEXT]]``, ``/typing``, ``/help``, ``/quit``; any other line is sent
to the current room.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from ..client import (
    ANY_PUSH,
    Backoff,
    Client,
    ClientError,
    Closed,
    GaveUp,
    Lifecycle,
    Opened,
    ProtocolProblem,
    Reconnecting,
    open_client,
)
from ..protocol import AckError, Push, RequestTimeout

HELP: Final = """commands:
  /join ROOM            join a room and make it the current one
  /leave [ROOM]         leave a room (default: the current one)
  /msg USER TEXT        send a private message (the node confirms it took it, not delivery)
  /who                  users online on the node
  /members              members of the current room, with their status
  /rooms                rooms joined (* marks the current one)
  /status               connection state, node, RTT, reconnects
  /status STATUS [TEXT] set your status (online, away ...)
  /typing               tell the current room you are typing
  /quit                 leave the chat
  anything else         is sent to the current room"""

Output = Callable[[str], None]


class ChatSession:
    """The chat's state and command handling over one :class:`Client`.

    Resource handling: registers handlers on the client (they run in the client's tasks); owns
    nothing else. Error handling: command errors (unknown room, timeouts, the node's refusals)
    become output lines; nothing propagates from :meth:`handle`.
    """

    def __init__(self, client: Client, out: Output) -> None:
        self.client = client
        self.out = out
        self.room: str | None = None  # the current room (namespace "/")
        for event in (ANY_PUSH, Lifecycle.OPEN, Lifecycle.CLOSE, Lifecycle.RECONNECTING):
            client.on(event, self.show)
        client.on(Lifecycle.GAVE_UP, self.show)
        client.on(Lifecycle.ERROR, self.show)

    # Incoming -----------------------------------------------------------------------------------

    def show(self, item: Any) -> None:
        line = self.render(item)
        if line is not None:
            self.out(line)

    def render(self, item: Any) -> str | None:
        """One line for a push or a lifecycle event, or ``None`` for what is not shown."""
        me = self.client.user
        if isinstance(item, Push):
            data = item.data if isinstance(item.data, dict) else {}
            if item.event == "message":
                text = _text_of(data)
                if item.room is not None:
                    return f"[{item.room.room}] {item.sender}: {text}"
                if item.sender == me:
                    return f"[you -> {', '.join(item.to or [])}] {text}"
                return f"[{item.sender} -> you] {text}"
            if item.event == "room.joined" and data.get("user") != me:
                return f"* {data.get('user')} joined {data.get('room')}"
            if item.event == "room.left" and data.get("user") != me:
                return f"* {data.get('user')} left {data.get('room')}"
            if item.event == "typing" and data.get("typing"):
                return f"* {data.get('user')} is typing in {data.get('room')}"
            if item.event == "status" and data.get("user") != me:
                text = f" ({data['text']})" if data.get("text") else ""
                return f"* {data.get('user')} is {data.get('status')}{text}"
            return None
        if isinstance(item, Opened):
            if item.reconnect and item.resumed:
                missed = f"{item.replayed} missed replayed"
                gaps = ", ".join(room for _, room in item.gaps)
                lost = f"; history gone in {gaps}" if gaps else ""
                return f"* resumed on {item.node} ({missed}{lost}; {item.flushed} sent)"
            if item.reconnect:
                rejoined = ", ".join(room for _, room in item.rejoined) or "no rooms"
                why = f"{item.reason}; " if item.reason else ""
                return (
                    f"* reconnected to {item.node}, a new session "
                    f"({why}re-joined {rejoined}; {item.flushed} sent)"
                )
            return f"* connected to {item.node} as {item.user}"
        if isinstance(item, Closed):
            then = "reconnecting" if item.reconnect else "not reconnecting"
            return f"* disconnected: {item.code} {item.reason} ({then})"
        if isinstance(item, Reconnecting):
            return f"* reconnecting in {item.delay:.1f} s (attempt {item.attempt})"
        if isinstance(item, GaveUp):
            return f"* gave up after {item.attempts} attempts"
        if isinstance(item, ProtocolProblem):
            return f"! {item.code}: {item.message}"
        return None

    # Outgoing -----------------------------------------------------------------------------------

    async def handle(self, line: str) -> bool:
        """Run one input line; ``False`` when the user quits."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            await self._guard(self._say(line))
            return True
        command, _, rest = line[1:].partition(" ")
        command, rest = command.lower(), rest.strip()
        if command in ("quit", "exit", "q"):
            return False
        action = self._commands().get(command)
        if action is None:
            self.out(f"! unknown command /{command} (try /help)")
            return True
        await self._guard(action(rest))
        return True

    def _commands(self) -> dict[str, Callable[[str], Any]]:
        return {
            "join": self._join,
            "leave": self._leave,
            "msg": self._msg,
            "who": self._who,
            "members": self._members,
            "rooms": self._rooms,
            "status": self._status,
            "typing": self._typing,
            "help": self._help,
        }

    async def _guard(self, action: Any) -> None:
        try:
            await action
        except AckError as exc:
            self.out(f"! {exc.code}: {exc.message}")
        except RequestTimeout as exc:
            self.out(f"! no answer: {exc.message}")
        except ClientError as exc:
            self.out(f"! {exc.message}")
        except ValueError as exc:
            self.out(f"! {exc}")

    async def _say(self, text: str) -> None:
        if self.room is None:
            self.out("! join a room first: /join ROOM")
            return
        await self._send({"room": self.room, "ns": "/"}, text)

    async def _join(self, rest: str) -> None:
        if not rest:
            raise ValueError("usage: /join ROOM")
        result = await self.client.join(rest)
        self.room = rest
        self.out(f"* joined {rest}: {', '.join(result['members'])}")

    async def _leave(self, rest: str) -> None:
        room = rest or self.room
        if room is None:
            raise ValueError("usage: /leave ROOM")
        await self.client.leave(room)
        if room == self.room:
            others = [r for _, r in self.client.rooms]
            self.room = others[-1] if others else None
        self.out(f"* left {room}" + (f"; now in {self.room}" if self.room else ""))

    async def _msg(self, rest: str) -> None:
        user, _, text = rest.partition(" ")
        if not user or not text.strip():
            raise ValueError("usage: /msg USER TEXT")
        result = await self._send({"user": user}, text.strip())
        if result is not None:  # the node copies it to our other connections, not to this one
            self.out(f"[you -> {user}] {text.strip()} ({_accepted(result)})")

    async def _send(self, to: dict[str, str], text: str) -> Any:
        """Send a text message: the node's answer, or ``None`` when offline (it is queued: the
        input never blocks on it)."""
        data = {"to": to, "data": {"type": "text", "payload": {"content": text}}}
        if self.client.connected:
            return await self.client.call("send", data)
        await self.client.emit("send", data)
        self.out(f"* offline: queued ({self.client.queued} waiting)")
        return None

    async def _who(self, rest: str) -> None:
        users = await self.client.online_users()
        self.out(f"* online ({len(users)}): {', '.join(users)}")

    async def _members(self, rest: str) -> None:
        room = rest or self.room
        if room is None:
            raise ValueError("usage: /members ROOM")
        members = await self.client.members(room)
        listed = ", ".join(f"{m['user']} ({m['status']})" for m in members)
        self.out(f"* {room}: {listed}")

    async def _rooms(self, rest: str) -> None:
        rooms = [f"{'*' if r == self.room else ''}{r}" for _, r in self.client.rooms]
        self.out(f"* rooms: {', '.join(rooms) or 'none'}")

    async def _status(self, rest: str) -> None:
        if rest:
            status, _, text = rest.partition(" ")
            await self.client.set_status(status, text.strip() or None)
            self.out(f"* you are {status}")
            return
        c = self.client
        rtt = c.rtt
        rtt_text = (
            f"{rtt.latest * 1000:.1f} ms (smoothed {rtt.smoothed * 1000:.1f} ms)"
            if rtt.latest is not None and rtt.smoothed is not None
            else "not measured yet"
        )
        self.out(
            f"* {c.state.value} to {c.node} as {c.user}; rtt {rtt_text}; "
            f"reconnects {c.reconnects}; queued {c.queued}; room {self.room or '-'}"
        )

    async def _typing(self, rest: str) -> None:
        if self.room is None:
            raise ValueError("join a room first: /join ROOM")
        await self.client.typing(self.room)

    async def _help(self, rest: str) -> None:
        self.out(HELP)


def _accepted(result: Any) -> str:
    """What the node's answer to a direct ``send`` says: it took the message. Whether the
    addressee is online it does not say: a message to nobody online is accepted too."""
    message_id = result.get("messageId") if isinstance(result, dict) else None
    name = f" as {str(message_id)[:8]}" if message_id else ""
    return f"accepted by the node{name}, delivery not confirmed"


def _text_of(data: dict[str, Any]) -> str:
    payload = data.get("payload")
    if isinstance(payload, dict):
        if "content" in payload:
            return str(payload["content"])
        if "url" in payload:
            return f"<{data.get('type')}: {payload['url']}>"
    return f"<{data.get('type', 'message')}>"


# The command ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd chat", description="Chat on a roomd node from the terminal."
    )
    parser.add_argument("url", help="the node, e.g. ws://localhost:9000")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user name (nodes in development mode)")
    who.add_argument("--token", help="a token (roomd token --user NAME)")
    parser.add_argument("--room", help="room to join at once")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="ping interval, seconds")
    return parser


async def _read_line() -> str | None:
    """One line of stdin, or ``None`` at its end.

    A worker thread reads it: stdin stays in blocking mode (a terminal shared with the shell must
    not be switched to non-blocking), and an abandoned read does not keep the process alive.
    """
    line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line if line else None


def _print(line: str) -> None:
    print(line, flush=True)


async def chat(args: argparse.Namespace, out: Output = _print) -> int:
    """Run the chat until ``/quit`` or the end of stdin."""
    options: dict[str, Any] = {"heartbeat_interval": args.heartbeat, "backoff": Backoff(0.5, 10.0)}
    try:
        async with open_client(args.url, user=args.user, token=args.token, **options) as client:
            session = ChatSession(client, out)
            out(f"* connected to {client.node} as {client.user} (/help for commands)")
            if args.room:
                await session.handle(f"/join {args.room}")
            while (line := await _read_line()) is not None:
                if not await session.handle(line):
                    break
    except ClientError as exc:
        out(f"roomd chat: {exc.message}")
        return 1
    return 0


def chat_main(argv: Sequence[str]) -> int:
    """``roomd chat URL (--user NAME | --token TOKEN) [--room ROOM]``."""
    args = _parser().parse_args(argv)
    try:
        return trio.run(chat, args)
    except KeyboardInterrupt:
        return 130

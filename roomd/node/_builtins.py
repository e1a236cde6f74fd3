"""The built-in client events: rooms, sends, typing, status, presence.

Each takes the connection and the event's data, and returns the acknowledgement's result or
raises :class:`RemoteProtocolError`. They never await (but a room send with ``ack``, which the
event worker runs): a built-in event is handled completely before the next frame of the
connection is read.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import attrs
import orjson

from .._config import Config
from ..cluster import (
    ClusterView,
    Position,
    StreamKey,
    StreamService,
    room_stream,
    with_position,
)
from ..hub import Connection, RoomKey
from ..protocol import (
    ChatMessage,
    ErrorCode,
    HistoryArgs,
    Push,
    PushTemplate,
    RemoteProtocolError,
    RoomArgs,
    RoomdError,
    RoomRef,
    SendArgs,
    StatusArgs,
    TypingArgs,
    structure,
    unstructure,
    validate_chat_message,
    validate_name,
)
from ._access import Access, Gate
from ._ids import message_id_for
from ._presence import PresenceFeed
from ._requests import Requests
from ._router import Router

Builtin = Callable[[Connection, Any, str | None], Any]  # (connection, data, cmid) -> result


class Later:
    """The result of a built-in event that is known later (a send waits for its sequencer):
    the dispatcher answers once it is settled, with a result or a :class:`RoomdError`."""

    __slots__ = ("_callback", "_outcome")

    def __init__(self) -> None:
        self._callback: Callable[[Any, RoomdError | None], None] | None = None
        self._outcome: tuple[Any, RoomdError | None] | None = None

    def settle(self, result: Any) -> None:
        self._finish(result, None)

    def fail(self, error: RoomdError) -> None:
        self._finish(None, error)

    def then(self, callback: Callable[[Any, RoomdError | None], None]) -> None:
        """Call ``callback(result, error)`` once settled (at once if it is)."""
        if self._outcome is not None:
            callback(*self._outcome)
        else:
            self._callback = callback

    def _finish(self, result: Any, error: RoomdError | None) -> None:
        if self._outcome is not None:
            return
        self._outcome = (result, error)
        if self._callback is not None:
            self._callback(result, error)


BUILTIN_EVENTS: Final = frozenset(
    {
        "room.join",
        "room.leave",
        "room.members",
        "room.history",
        "users.subscribe",
        "users.unsubscribe",
        "send",
        "typing",
        "status",
        "users.online",
        "cluster.stats",
    }
)


@attrs.frozen
class Outgoing:
    """A checked ``send``: what to deliver, to whom, and the acknowledgement's result."""

    args: SendArgs
    push: Push
    template: PushTemplate
    result: dict[str, Any]


def wants_ack(event: Any) -> bool:
    """Whether an event frame is a ``send`` with ``ack`` (handled by the event worker)."""
    data = event.data
    return event.event == "send" and isinstance(data, dict) and data.get("ack") is True


class Builtins:
    """The built-in events of one node, with what they need of it."""

    def __init__(
        self,
        config: Config,
        router: Router,
        requests: Requests,
        view: ClusterView,
        streams: StreamService,
        presence: PresenceFeed,
        cluster_stats: Callable[[], dict[str, Any]],
        gate: Gate,
    ) -> None:
        self.config = config
        self.streams = streams
        self.presence = presence
        self.limits = config.limits
        self.payload_limits = config.limits.payload_limits()
        self.router = router
        self.requests = requests
        self.view = view
        self.cluster_stats = cluster_stats
        self.gate = gate
        self.table: dict[str, Builtin] = {
            "room.join": self.room_join,
            "room.leave": self.room_leave,
            "room.members": self.room_members,
            "room.history": self.room_history,
            "users.subscribe": self.users_subscribe,
            "users.unsubscribe": self.users_unsubscribe,
            "send": self.send,
            "typing": self.typing_notice,
            "status": self.status,
            "users.online": self.users_online,
            "cluster.stats": self.stats,
        }
        assert self.table.keys() == BUILTIN_EVENTS

    # Rooms -------------------------------------------------------------------------------------

    def _room(self, args: RoomArgs | TypingArgs) -> RoomKey:
        limits = self.payload_limits
        return (validate_name("ns", args.ns, limits), validate_name("room", args.room, limits))

    def _member_room(self, conn: Connection, args: RoomArgs | TypingArgs) -> RoomKey:
        key = self._room(args)
        if key not in conn.rooms:
            raise RemoteProtocolError(
                ErrorCode.NOT_IN_ROOM, f"not in room {key[1]!r} of {key[0]!r}"
            )
        return key

    def room_join(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        key = self._room(structure(data, RoomArgs))
        limits = self.limits
        if key not in conn.rooms:
            self.gate.check(conn, Access("join", room=key))
            if len(conn.rooms) >= limits.max_rooms_per_connection:
                raise RemoteProtocolError(
                    ErrorCode.TOO_MANY_ROOMS,
                    f"a connection may be in at most {limits.max_rooms_per_connection} rooms",
                )
            members = self.view.room_users.get(key, ())
            if conn.user not in members and len(members) >= limits.max_members_per_room:
                raise RemoteProtocolError(ErrorCode.ROOM_FULL, f"room {key[1]!r} is full")
            if self.streams.takes_over(room_stream(*key)):
                later = Later()
                conn.outlet.spawn(self._join_later, conn, key, later)
                return later
            self.router.join(conn, key)
        result = {"ns": key[0], "room": key[1], "members": self.view.room_members(key)}
        return self._with_position(conn, room_stream(*key), result)

    async def _join_later(self, conn: Connection, key: RoomKey, later: Later) -> None:
        """A join of a room this node numbers but has not taken over yet (it came to rank
        first: it started, or restarted): the room is taken over first, and the connection
        joins after, so that what the take-over gathers from the other nodes (numbered before
        this join) is not pushed to it."""
        stream = room_stream(*key)
        try:
            await self.streams.taken_over(stream)
        except RoomdError as exc:
            later.fail(exc)
            return
        if key not in conn.rooms and conn.session.is_open:
            self.router.join(conn, key)
        result = {"ns": key[0], "room": key[1], "members": self.view.room_members(key)}
        await self._position_later(stream, result, later)

    def _with_position(self, conn: Connection, stream: StreamKey, result: dict[str, Any]) -> Any:
        """``result`` with the stream's position now (``epoch``, ``offset``): where the
        client's reading of it starts. Known at once here if this node sequences it."""
        position = self.streams.local_tail(stream)
        if position is not None:
            return {**result, "epoch": position.epoch, "offset": position.offset}
        later = Later()
        conn.outlet.spawn(self._position_later, stream, result, later)
        return later

    async def _position_later(
        self, stream: StreamKey, result: dict[str, Any], later: Later
    ) -> None:
        try:
            position = await self.streams.tail(stream)
        except RoomdError:  # its sequencer cannot be reached (the bus is down): what is here
            position = self.streams.known_tail(stream)
        else:
            self.streams.follow(stream, position)
        later.settle({**result, "epoch": position.epoch, "offset": position.offset})

    def room_leave(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        key = self._member_room(conn, structure(data, RoomArgs))
        self.router.leave(conn, key)
        return {"ns": key[0], "room": key[1]}

    def room_members(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        key = self._member_room(conn, structure(data, RoomArgs))
        view = self.view
        members = [
            {
                "user": user,
                "status": view.status_of(user)[0],
                "connections": view.connections_of(user),
            }
            for user in view.room_members(key)
        ]
        return {"ns": key[0], "room": key[1], "members": members}

    def room_history(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        """The room's messages after ``since``, or its last ``limit`` (members only)."""
        args = structure(data, HistoryArgs)
        key = self._member_room(conn, RoomArgs(args.room, args.ns))
        limit = min(max(args.limit, 0), self.config.history.max_messages)
        since = Position(args.since.epoch, args.since.offset) if args.since else None
        later = Later()
        conn.outlet.spawn(self._history_later, key, since, limit, later)
        return later

    async def _history_later(
        self, key: RoomKey, since: Position | None, limit: int, later: Later
    ) -> None:
        stream = room_stream(*key)
        try:
            entries = await self.streams.read(stream, since)
            tail = await self.streams.tail(stream)
        except RoomdError as exc:
            later.fail(exc)
            return
        if since is None:
            entries = entries[-limit:] if limit else []
        messages = [orjson.loads(b"{" + with_position(e.body, e.epoch, e.offset)) for e in entries]
        later.settle(
            {
                "ns": key[0],
                "room": key[1],
                "messages": messages,
                "epoch": tail.epoch,
                "offset": tail.offset,
            }
        )

    # Sends -------------------------------------------------------------------------------------

    def prepare_send(self, conn: Connection, data: Any, cmid: str | None = None) -> Outgoing:
        args = structure(data, SendArgs)
        limits = self.payload_limits
        mode = args.to.mode
        if mode not in self.config.permissions.client_send:
            raise RemoteProtocolError(ErrorCode.FORBIDDEN, f"clients may not send to {mode}")
        if args.ack and mode != "room":
            raise RemoteProtocolError(ErrorCode.INVALID, "ack: only room sends can be acknowledged")
        if args.ack and not 0 < args.timeout <= self.limits.max_ack_timeout:
            limit = self.limits.max_ack_timeout
            raise RemoteProtocolError(ErrorCode.INVALID, f"timeout: must be within 0..{limit:g}")
        validate_name("event", args.event, limits)
        payload = args.data
        message_id = message_id_for(conn.user, cmid)
        if args.event == "message":
            message = self._chat_message(conn, args.data, message_id)
            message_id = message.message_id or message_id
            payload = unstructure(message)
        result: dict[str, Any] = {"messageId": message_id}
        room: RoomRef | None = None
        to: list[str] | None = None
        if mode == "room":
            assert args.to.room is not None
            room = RoomRef(*self._member_room(conn, RoomArgs(args.to.room, args.to.ns)))
        elif mode == "user":
            assert args.to.user is not None
            to = [validate_name("user", args.to.user, limits)]
        elif mode == "users":
            assert args.to.users is not None
            to = sorted({validate_name("user", u, limits) for u in args.to.users})
        key = (room.ns, room.room) if room is not None else None
        users = tuple(to) if to is not None else None
        self.gate.check(conn, Access("send", room=key, users=users, event=args.event))
        push = Push(args.event, payload, room=room, sender=conn.user, to=to)
        try:
            template = PushTemplate.of(push, volatile=args.volatile)
        except TypeError:
            raise RemoteProtocolError(
                ErrorCode.INVALID, "data: not representable as JSON"
            ) from None
        return Outgoing(args, push, template, result)

    def send(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        """Deliver a message. A reliable one is acknowledged once its stream numbered it (the
        ack carries its position); sent again with the same ``cmid`` (to any node), it gets
        the same message id and position, and is not delivered twice."""
        out = self.prepare_send(conn, data, cmid)
        args, push = out.args, out.push
        message_id = out.result["messageId"]
        if push.to is None and push.room is None:
            self.router.route_all(out.template, exclude=conn if args.except_self else None)
            return out.result
        if args.volatile:
            later = None
            done = None
        else:
            later = Later()
            done = functools.partial(_settle_send, later, out.result, push.room is not None)
        if push.room is not None:
            exclude = conn if args.except_self else None
            key = (push.room.ns, push.room.room)
            self.router.route_room(
                key, out.template, message_id=message_id, exclude=exclude, done=done
            )
        elif push.to is not None:
            self.router.route_users(
                push.to, out.template, message_id=message_id, sender=conn, done=done
            )
        return later if later is not None else out.result

    async def send_with_ack(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        """``send`` with ``ack``: wait for every member's acknowledgement, or the timeout."""
        out = self.prepare_send(conn, data, cmid)
        push = out.push
        assert push.room is not None
        counts = await self.requests.request_room(
            (push.room.ns, push.room.room),
            push.event,
            push.data,
            sender=conn.user,
            exclude=conn if out.args.except_self else None,
            timeout=out.args.timeout,
        )
        return {**out.result, **counts}

    def _chat_message(self, conn: Connection, data: Any, message_id: str) -> ChatMessage:
        message = structure(data, ChatMessage)
        validate_chat_message(message, self.payload_limits)
        if message.sender is not None and message.sender != conn.user:
            raise RemoteProtocolError(ErrorCode.INVALID, "sender: must be the connected user")
        return ChatMessage(  # (not attrs.evolve: it inspects the class on every call)
            message.type,
            message.payload,
            message_id=str(uuid.UUID(message.message_id)) if message.message_id else message_id,
            timestamp=message.timestamp if message.timestamp is not None else _now_ms(),
            sender=conn.user,
            metadata=message.metadata,
        )

    # Presence ----------------------------------------------------------------------------------

    def typing_notice(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        args = structure(data, TypingArgs)
        key = self._member_room(conn, args)
        self.gate.check(conn, Access("typing", room=key))
        body = {"ns": key[0], "room": key[1], "user": conn.user, "typing": args.typing}
        template = PushTemplate.of(Push("typing", body), volatile=True)
        self.router.route_room(key, template, skip_user=conn.user)
        return {}

    def status(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        args = structure(data, StatusArgs)
        limits = self.payload_limits
        if not args.status:
            raise RemoteProtocolError(ErrorCode.INVALID, "status: must not be empty")
        for field, value in (("status", args.status), ("text", args.text)):
            if value is not None and len(value) > limits.max_status_chars:
                raise RemoteProtocolError(
                    ErrorCode.INVALID, f"{field}: longer than {limits.max_status_chars} characters"
                )
        self.router.set_status(conn.user, args.status, args.text)
        return {}

    def users_online(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        return {"users": self.view.online_users()}

    def users_subscribe(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        """The online users now; the whole list is pushed again (``users.online``) whenever
        it changes, until ``users.unsubscribe`` or the session ends."""
        return {"users": self.presence.subscribe(conn.id)}

    def users_unsubscribe(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        self.presence.unsubscribe(conn.id)
        return {}

    def stats(self, conn: Connection, data: Any, cmid: str | None = None) -> Any:
        self.gate.require_operator(conn)
        return self.cluster_stats()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _settle_send(
    later: Later, result: dict[str, Any], positioned: bool, position: Position | None
) -> None:
    if position is None:
        later.fail(
            RoomdError(
                ErrorCode.TIMEOUT,
                "no sequencer confirmed the message; send it again with the same cmid",
            )
        )
    elif positioned:
        later.settle({**result, "epoch": position.epoch, "offset": position.offset})
    else:
        later.settle(result)

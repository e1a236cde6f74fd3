"""The built-in client events: rooms, sends, typing, status, presence.

Each takes the node, the client and the event's data, and returns the acknowledgement's result
or raises :class:`RemoteProtocolError`. They never await: a built-in event is handled completely
before the next frame of the connection is read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from .hub import Client, RoomKey
from .protocol import (
    ChatMessage,
    ErrorCode,
    Push,
    PushTemplate,
    RemoteProtocolError,
    RoomArgs,
    RoomRef,
    SendArgs,
    StatusArgs,
    TypingArgs,
    structure,
    unstructure,
    validate_chat_message,
    validate_name,
)

if TYPE_CHECKING:
    from ._node import Node

Builtin = Callable[["Node", Client, Any], Any]
AsyncBuiltin = Callable[["Node", Client, Any], Awaitable[Any]]


def _room(node: Node, args: RoomArgs | TypingArgs) -> RoomKey:
    limits = node.payload_limits
    return (validate_name("ns", args.ns, limits), validate_name("room", args.room, limits))


def _member_room(node: Node, client: Client, args: RoomArgs | TypingArgs) -> RoomKey:
    key = _room(node, args)
    if key not in client.rooms:
        raise RemoteProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {key[1]!r} of {key[0]!r}")
    return key


def room_join(node: Node, client: Client, data: Any) -> Any:
    key = _room(node, structure(data, RoomArgs))
    limits = node.config.limits
    if key not in client.rooms:
        if len(client.rooms) >= limits.max_rooms_per_connection:
            raise RemoteProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"a connection may be in at most {limits.max_rooms_per_connection} rooms",
            )
        members = node.view.room_users.get(key, ())
        if client.user not in members and len(members) >= limits.max_members_per_room:
            raise RemoteProtocolError(ErrorCode.ROOM_FULL, f"room {key[1]!r} is full")
        node.join(client, key)
    return {"ns": key[0], "room": key[1], "members": node.view.room_members(key)}


def room_leave(node: Node, client: Client, data: Any) -> Any:
    key = _member_room(node, client, structure(data, RoomArgs))
    node.leave(client, key)
    return {"ns": key[0], "room": key[1]}


def room_members(node: Node, client: Client, data: Any) -> Any:
    key = _member_room(node, client, structure(data, RoomArgs))
    view = node.view
    members = [
        {
            "user": user,
            "status": view.status_of(user)[0],
            "connections": view.connections_of(user),
        }
        for user in view.room_members(key)
    ]
    return {"ns": key[0], "room": key[1], "members": members}


@attrs.frozen
class Outgoing:
    """A checked ``send``: what to deliver, to whom, and the acknowledgement's result."""

    args: SendArgs
    push: Push
    template: PushTemplate
    result: dict[str, Any]


def prepare_send(node: Node, client: Client, data: Any) -> Outgoing:
    args = structure(data, SendArgs)
    limits = node.payload_limits
    mode = args.to.mode
    if mode not in node.config.permissions.client_send:
        raise RemoteProtocolError(ErrorCode.FORBIDDEN, f"clients may not send to {mode}")
    if args.ack and mode != "room":
        raise RemoteProtocolError(ErrorCode.INVALID, "ack: only room sends can be acknowledged")
    if args.ack and not 0 < args.timeout <= node.config.limits.max_ack_timeout:
        limit = node.config.limits.max_ack_timeout
        raise RemoteProtocolError(ErrorCode.INVALID, f"timeout: must be within 0..{limit:g}")
    validate_name("event", args.event, limits)
    result: dict[str, Any] = {}
    payload = args.data
    if args.event == "message":
        message = _chat_message(client, args.data, node)
        result["messageId"] = message.message_id
        payload = unstructure(message)
    room: RoomRef | None = None
    to: list[str] | None = None
    if mode == "room":
        assert args.to.room is not None
        room = RoomRef(*_member_room(node, client, RoomArgs(args.to.room, args.to.ns)))
    elif mode == "user":
        assert args.to.user is not None
        to = [validate_name("user", args.to.user, limits)]
    elif mode == "users":
        assert args.to.users is not None
        to = sorted({validate_name("user", u, limits) for u in args.to.users})
    push = Push(args.event, payload, room=room, sender=client.user, to=to)
    try:
        template = PushTemplate.of(push, volatile=args.volatile)
    except TypeError:
        raise RemoteProtocolError(ErrorCode.INVALID, "data: not representable as JSON") from None
    return Outgoing(args, push, template, result)


def send(node: Node, client: Client, data: Any) -> Any:
    out = prepare_send(node, client, data)
    args, push = out.args, out.push
    if push.room is not None:
        exclude = client if args.except_self else None
        node.route_room((push.room.ns, push.room.room), out.template, exclude=exclude)
    elif push.to is not None:
        node.route_users(push.to, out.template, sender=client)
    else:
        node.route_all(out.template, exclude=client if args.except_self else None)
    return out.result


async def send_with_ack(node: Node, client: Client, data: Any) -> Any:
    """``send`` with ``ack``: wait for every member's acknowledgement, or the timeout."""
    out = prepare_send(node, client, data)
    push = out.push
    assert push.room is not None
    counts = await node.request_room(
        (push.room.ns, push.room.room),
        push.event,
        push.data,
        sender=client.user,
        exclude=client if out.args.except_self else None,
        timeout=out.args.timeout,
    )
    return {**out.result, **counts}


def wants_ack(event: Any) -> bool:
    """Whether an event frame is a ``send`` with ``ack`` (handled by the event worker)."""
    data = event.data
    return event.event == "send" and isinstance(data, dict) and data.get("ack") is True


def _chat_message(client: Client, data: Any, node: Node) -> ChatMessage:
    message = structure(data, ChatMessage)
    validate_chat_message(message, node.payload_limits)
    if message.sender is not None and message.sender != client.user:
        raise RemoteProtocolError(ErrorCode.INVALID, "sender: must be the connected user")
    return attrs.evolve(
        message,
        sender=client.user,
        message_id=str(uuid.UUID(message.message_id) if message.message_id else uuid.uuid4()),
        timestamp=message.timestamp if message.timestamp is not None else _now_ms(),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def typing(node: Node, client: Client, data: Any) -> Any:
    args = structure(data, TypingArgs)
    key = _member_room(node, client, args)
    body = {"ns": key[0], "room": key[1], "user": client.user, "typing": args.typing}
    template = PushTemplate.of(Push("typing", body), volatile=True)
    node.route_room(key, template, skip_user=client.user)
    return {}


def status(node: Node, client: Client, data: Any) -> Any:
    args = structure(data, StatusArgs)
    limits = node.payload_limits
    if not args.status:
        raise RemoteProtocolError(ErrorCode.INVALID, "status: must not be empty")
    for field, value in (("status", args.status), ("text", args.text)):
        if value is not None and len(value) > limits.max_status_chars:
            raise RemoteProtocolError(
                ErrorCode.INVALID, f"{field}: longer than {limits.max_status_chars} characters"
            )
    node.set_status(client.user, args.status, args.text)
    return {}


def users_online(node: Node, client: Client, data: Any) -> Any:
    return {"users": node.online_users()}


def cluster_stats(node: Node, client: Client, data: Any) -> Any:
    return node.cluster_stats()


BUILTINS: dict[str, Builtin] = {
    "room.join": room_join,
    "room.leave": room_leave,
    "room.members": room_members,
    "send": send,
    "typing": typing,
    "status": status,
    "users.online": users_online,
    "cluster.stats": cluster_stats,
}

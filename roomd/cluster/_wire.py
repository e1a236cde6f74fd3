"""Bus messages: one ZeroMQ frame each, the topic as a prefix.

``topic`` ``\\x00`` msgpack ``[kind, node, epoch, seq, body]``

Topics end with ``\\x00`` (names never contain control characters), so a subscription to room
``a`` never matches room ``ab``. A node subscribes to what it hosts: the rooms with a local
member (``r``), the users with a local connection (``u``), its own node topic (``n``), and the
broadcast (``a``) and control (``c``) topics; XPUB/XSUB forwards subscriptions upstream, so a
message travels only to nodes interested in it.

``seq`` numbers every message a node publishes within its ``epoch`` (a random number drawn at
start). Presence deltas carry their own gap-free numbering in their body (see ``_view.py``).
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import msgpack

CONTROL: Final = b"c\x00"
ALL: Final = b"a\x00"


class Kind:
    ROOM: Final = "room"  # [json_body, volatile, skip_user]
    USER: Final = "user"  # [json_body, volatile]
    ALL: Final = "all"  # [json_body, volatile]
    HEARTBEAT: Final = "hb"  # [delta_seq, info]
    DELTA: Final = "delta"  # [delta_seq, delta]
    BYE: Final = "bye"  # None
    SNAPSHOT_REQUEST: Final = "snapreq"  # requester
    SNAPSHOT: Final = "snap"  # [delta_seq, state]
    PROBE: Final = "probe"  # token
    CALL: Final = "call"  # [call_id, event, data, targets or None]
    REPLY: Final = "reply"  # [call_id, ok, result or [code, message]]


def room_topic(ns: str, room: str) -> bytes:
    return b"r" + ns.encode() + b"\x1f" + room.encode() + b"\x00"


def user_topic(user: str) -> bytes:
    return b"u" + user.encode() + b"\x00"


def node_topic(name: str) -> bytes:
    return b"n" + name.encode() + b"\x00"


@attrs.frozen
class Envelope:
    topic: bytes
    kind: str
    node: str
    epoch: int
    seq: int
    body: Any

    def topic_name(self) -> str:
        """The topic without its kind letter and terminator (a user or node name)."""
        return self.topic[1:-1].decode()

    def room_key(self) -> tuple[str, str]:
        ns, _, room = self.topic[1:-1].decode().partition("\x1f")
        return ns, room


class BadMessage(Exception):
    """A bus message that does not parse."""


def encode(topic: bytes, kind: str, node: str, epoch: int, seq: int, body: Any) -> bytes:
    packed: bytes = msgpack.packb([kind, node, epoch, seq, body], use_bin_type=True)
    return topic + packed


def decode(message: bytes) -> Envelope:
    end = message.find(b"\x00")
    if end < 0:
        raise BadMessage("no topic terminator")
    try:
        kind, node, epoch, seq, body = msgpack.unpackb(message[end + 1 :], raw=False)
    except Exception as exc:
        raise BadMessage(str(exc)) from None
    return Envelope(message[: end + 1], kind, node, epoch, seq, body)

"""Bus messages: one ZeroMQ frame each, the topic as a prefix.

``topic`` ``\\x00`` ``node`` ``\\x00`` msgpack ``[kind, epoch, seq, body]``

Topics end with ``\\x00`` (names never contain control characters), so a subscription to room
``a`` never matches room ``ab``. With brokers in several shards, each topic travels through the
brokers of one shard (:func:`shard_of`). A node subscribes to what it hosts: the rooms with a local
member (``r``), its own node topic (``n``), and the broadcast (``a``) and control (``c``) topics;
XPUB/XSUB forwards subscriptions upstream, so a message travels only to nodes interested in it.
Pushes to users go to the topics of the nodes where those users are connected (the presence
view knows), so a connection costs no subscription. The sending node's name comes before the
msgpack part: a node drops its own messages (a broker echoes them back to every subscriber)
without decoding them.

``seq`` numbers every message a node publishes within its ``epoch`` (a random number drawn at
start). Presence deltas carry their own gap-free numbering in their body (see ``_view.py``).

**Batches.** The messages a node publishes in one scheduling round on the same topic leave as
one ZeroMQ message (:func:`coalesce`): ``[kind, epoch, seq, body]`` with kind ``batch``, the
first one's ``epoch`` and ``seq``, and as body the messages' own msgpack parts, each
``[kind, epoch, seq, body]``, joined without decoding or encoding them again. A burst of direct
messages to one node thus costs one ZeroMQ send, one pass through the broker and one receive
per round instead of one per message. Control messages (heartbeats, presence) always travel
alone. Messages on one topic keep their order; a batch may leave before a message of another
topic published earlier in the round (never after one published later than its first message).
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import attrs
import msgpack

CONTROL: Final = b"c\x00"
ALL: Final = b"a\x00"


class Kind:
    ROOM: Final = "room"  # [json_body, volatile, skip_user]
    USERS: Final = "users"  # [json_body, volatile, users on the receiving node]
    ALL: Final = "all"  # [json_body, volatile]
    HEARTBEAT: Final = "hb"  # [delta_seq, info]
    DELTAS: Final = "deltas"  # [first_delta_seq, [delta, ...]]: numbered first_seq, first_seq+1 ...
    BYE: Final = "bye"  # None
    SNAPSHOT_REQUEST: Final = "snapreq"  # requester
    SNAPSHOT: Final = "snap"  # [delta_seq, state]
    PROBE: Final = "probe"  # token
    CALL: Final = "call"  # [call_id, event, data, targets or None]
    REPLY: Final = "reply"  # [call_id, ok, result or [code, message]]
    SEQUENCE: Final = "seq"  # [stream, draft entry, hops]: to the stream's sequencer
    ENTRY: Final = "entry"  # [stream, entry]: a numbered message, to the stream's readers
    CONFIRM: Final = "confirm"  # [stream, message_id, epoch, offset]: to the sender's node
    # [stream, [epoch, offset] or None, [entry, ...]]: from an inbox's sequencer to a node
    # presence says its user came to (where its copy starts, and the latest messages)
    FOLLOWED: Final = "followed"
    BATCH: Final = "batch"  # [[kind, epoch, seq, body], ...]: messages of one topic (coalesce)


def probe_topic(node: str, shard: int) -> bytes:
    """The topic of ``node``'s probes through the brokers of ``shard``."""
    return b"p" + node.encode() + b"\x1f" + str(shard).encode() + b"\x00"


def shard_of(topic: bytes, shards: int) -> int:
    """The shard whose brokers carry ``topic``: a stable hash (CRC-32) of it, the same on every
    node; a probe names its own."""
    if shards <= 1:
        return 0
    if topic.startswith(b"p"):
        return int(topic[topic.rfind(b"\x1f") + 1 : -1]) % shards
    return zlib.crc32(topic) % shards


def room_topic(ns: str, room: str) -> bytes:
    return b"r" + ns.encode() + b"\x1f" + room.encode() + b"\x00"


def node_topic(name: str) -> bytes:
    return b"n" + name.encode() + b"\x00"


@attrs.define(eq=False)
class Envelope:
    """One decoded bus message (never changed once made; not ``frozen``, which would make
    its ``__init__`` three times as costly: one is made per message received)."""

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


def origin_marker(node: str) -> bytes:
    """What follows the topic in every message ``node`` publishes."""
    return node.encode() + b"\x00"


_packer: Final = msgpack.Packer(use_bin_type=True)  # reused: packb builds one per call


def encode(topic: bytes, kind: str, node: str, epoch: int, seq: int, body: Any) -> bytes:
    packed: bytes = _packer.pack([kind, epoch, seq, body])
    return topic + origin_marker(node) + packed


def is_from(message: bytes, marker: bytes) -> bool:
    """Whether ``message`` was published by the node whose :func:`origin_marker` is given."""
    return message.startswith(marker, message.find(b"\x00") + 1)


_UINT_WIDTHS: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}  # msgpack uint 8/16/32/64


def stamp(message: bytes) -> tuple[bytes, int, int] | None:
    """The (origin, epoch, seq) of a message, read without decoding it (its msgpack part
    starts with a 4-array whose first item is a short string); None if it is not a bus
    message of this shape."""
    end = message.find(b"\x00")
    origin_end = message.find(b"\x00", end + 1)
    if end < 0 or origin_end < 0:
        return None
    i = origin_end + 1
    try:
        if message[i] != 0x94 or not 0xA0 <= message[i + 1] <= 0xBF:
            return None
        i += 2 + (message[i + 1] & 0x1F)
        epoch, i = _uint(message, i)
        seq, _ = _uint(message, i)
    except IndexError:
        return None
    if epoch < 0 or seq < 0:
        return None
    return message[end + 1 : origin_end], epoch, seq


def _uint(data: bytes, i: int) -> tuple[int, int]:
    """The msgpack unsigned integer at ``data[i]`` and the index after it (-1: not one)."""
    head = data[i]
    if head < 0x80:
        return head, i + 1
    width = _UINT_WIDTHS.get(head)
    if width is None or i + 1 + width > len(data):
        return -1, i
    return int.from_bytes(data[i + 1 : i + 1 + width], "big"), i + 1 + width


MAX_BATCH: Final = 256  # messages in one batch, at most
MAX_BATCHED: Final = 8 * 1024  # bytes: a message this large or larger travels alone
_BATCH_KIND: Final = _packer.pack(Kind.BATCH)


def coalesce(messages: list[bytes]) -> list[bytes]:
    """``messages`` (one node's, in the order published) with those on the same topic joined
    into batches, each where the first of its messages was; control messages, and large ones,
    unchanged and alone."""
    if len(messages) < 2:
        return messages
    groups: dict[bytes, list[bytes]] = {}
    order: list[list[bytes]] = []
    for message in messages:
        topic = message[: message.find(b"\x00") + 1]
        if topic == CONTROL or len(message) >= MAX_BATCHED:
            order.append([message])
            continue
        group = groups.get(topic)
        if group is None or len(group) >= MAX_BATCH:
            group = groups[topic] = []
            order.append(group)
        group.append(message)
    if len(order) == len(messages):
        return messages
    return [frame for group in order for frame in _join(group)]


def _join(group: list[bytes]) -> list[bytes]:
    """The group as one batch; as it is if it is one message, or if its first has no stamp
    (never the case for a node's own messages: never merge what is misread, nor fail)."""
    first = group[0]
    stamped = stamp(first) if len(group) > 1 else None
    if stamped is None:
        return group
    prefix = first.find(b"\x00", first.find(b"\x00") + 1) + 1  # topic and origin
    _, epoch, seq = stamped
    count = len(group)
    header = bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    joined = b"".join(
        [
            first[:prefix],
            b"\x94",
            _BATCH_KIND,
            _packer.pack(epoch),
            _packer.pack(seq),
            header,
            *[message[prefix:] for message in group],
        ]
    )
    return [joined]


def decode_all(message: bytes) -> list[Envelope]:
    """The messages in ``message``: itself, or those of a batch."""
    envelope = decode(message)
    if envelope.kind != Kind.BATCH:
        return [envelope]
    topic, node = envelope.topic, envelope.node
    try:
        return [
            Envelope(topic, kind, node, epoch, seq, body)
            for kind, epoch, seq, body in envelope.body
        ]
    except (TypeError, ValueError) as exc:
        raise BadMessage(f"a batch that does not parse: {exc}") from None


def decode(message: bytes) -> Envelope:
    end = message.find(b"\x00")
    origin_end = message.find(b"\x00", end + 1)
    if end < 0 or origin_end < 0:
        raise BadMessage("no topic or origin terminator")
    try:
        kind, epoch, seq, body = msgpack.unpackb(message[origin_end + 1 :], raw=False)
        node = message[end + 1 : origin_end].decode()
    except Exception as exc:
        raise BadMessage(str(exc)) from None
    return Envelope(message[: end + 1], kind, node, epoch, seq, body)

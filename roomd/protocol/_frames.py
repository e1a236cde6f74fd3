"""Frames of the roomd wire protocol, version 1.

Every frame is an object with a ``type`` key. Text WebSocket frames carry JSON, binary frames carry
the same model as msgpack; a connection speaks the encoding of its ``hello`` frame. Field names are
camelCase on the wire (``resumeToken``) and snake_case here; unknown fields are ignored so that
newer peers can add fields without breaking older ones.

Client to server: ``hello``, ``event``, ``ack`` (answer to a ``request``), ``ping``.
Server to client: ``welcome``, ``push``, ``ack`` (answer to an ``event``), ``request``, ``pong``,
``error``.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({1})
DEFAULT_NAMESPACE: Final = "/"


@attrs.frozen
class ErrorInfo:
    """An error as the protocol carries it: a stable ``code`` and a human ``message``."""

    code: str
    message: str


@attrs.frozen
class StreamPosition:
    """Where a client is in a stream: the ``epoch`` and ``offset`` of the last message of it
    that the client received (pushes of a stream carry both)."""

    epoch: str
    offset: int


@attrs.frozen
class RoomPosition:
    """A room the client is in, and its position in the room's stream."""

    ns: str
    room: str
    epoch: str
    offset: int


@attrs.frozen
class ResumeRequest:
    """What a reconnecting client presents to continue its session: the session, its resume
    token, the last push ``seq`` it received and its position in each stream it follows (its
    rooms, its inbox)."""

    session: str
    token: str
    seq: int  # the last push sequence number the client received
    rooms: list[RoomPosition] | None = None
    inbox: StreamPosition | None = None


@attrs.frozen
class Hello:
    """First frame of a connection (client to server)."""

    v: int
    resume: ResumeRequest | None = None
    client: str | None = None  # free-form client name and version, for logs


@attrs.frozen
class Event:
    """A client event. With an ``id`` the server answers with an ``ack`` carrying that id.

    ``cmid`` is an optional client message id: a node acknowledges a repeated ``cmid`` of the same
    session with the original result instead of handling it twice.
    """

    event: str
    data: Any = None
    id: int | None = None
    cmid: str | None = None


@attrs.frozen
class Ack:
    """The answer to an ``event`` (server to client) or to a ``request`` (client to server)."""

    id: int
    result: Any = None
    error: ErrorInfo | None = None


@attrs.frozen
class Ping:
    """Round-trip probe; ``ts`` is echoed back in the ``pong``."""

    ts: float


@attrs.frozen
class Pong:
    ts: float
    server_ts: float  # the node's clock (seconds since the epoch) when it answered


@attrs.frozen
class HeartbeatInfo:
    interval: float  # seconds between the node's pings when the connection is idle
    timeout: float  # a connection silent for this long is closed


@attrs.frozen
class LimitsInfo:
    max_frame_bytes: int
    rate: float  # events per second allowed on average
    burst: int  # events allowed at once
    max_rooms: int  # rooms one connection may be in
    max_text_chars: int


@attrs.frozen
class Welcome:
    """The node's answer to ``hello``."""

    v: int
    session: str
    resume_token: str
    node: str
    user: str
    heartbeat: HeartbeatInfo
    limits: LimitsInfo
    resumed: bool  # whether a previous session was continued
    seq: int  # the last sequence number of the session's pushes
    reason: str | None = None  # why a resume was refused (see ResumeRefusal)
    replayed: int = 0  # pushes the client missed, sent right after the welcome
    gaps: list[RoomRef] | None = None  # rooms whose missed messages are no longer held
    inbox_gap: bool = False  # the inbox's missed messages are no longer held
    inbox: StreamPosition | None = None  # where the user's inbox stream stands at the welcome


@attrs.frozen
class RoomRef:
    """A room: a name within a namespace."""

    ns: str
    room: str


@attrs.frozen
class Push:
    """A server-to-client event.

    ``seq`` numbers the session's reliable pushes (1, 2, 3 ...); volatile pushes (typing, for
    example) carry no ``seq`` and are never replayed. A push that belongs to a stream (a room's,
    or the user's inbox) carries its position there: ``epoch`` and ``offset``.
    """

    event: str
    data: Any = None
    seq: int | None = None
    room: RoomRef | None = None  # set when sent to a room
    sender: str | None = None  # "from" on the wire: the user who sent it, if a user did
    to: list[str] | None = None  # set when sent to users: the users it was addressed to
    epoch: str | None = None  # the stream's epoch, for a push of a stream
    offset: int | None = None  # its offset in the stream


@attrs.frozen
class Reconnect:
    """The node asks the client to resume its session now at ``url`` (the node is draining)."""

    url: str
    node: str
    reason: str = "draining"
    alternates: list[str] | None = None  # other nodes, should ``url`` fail


@attrs.frozen
class Request:
    """A server-to-client request: the client answers with an ``ack`` of the same id."""

    id: int
    event: str
    data: Any = None
    timeout: float = 10.0
    room: RoomRef | None = None  # set when the request went to a room (a broadcast with ack)
    sender: str | None = None  # "from" on the wire: the user who sent it, if a user did


@attrs.frozen
class Error:
    """A protocol error not tied to an acknowledgement (bad frame, unknown type ...)."""

    code: str
    message: str
    ref: int | None = None  # the id of the offending frame, when it had one


ClientFrame = Hello | Event | Ack | Ping
ServerFrame = Welcome | Push | Ack | Request | Pong | Error | Reconnect

CLIENT_FRAME_TYPES: Final[dict[str, type[ClientFrame]]] = {
    "hello": Hello,
    "event": Event,
    "ack": Ack,
    "ping": Ping,
}
SERVER_FRAME_TYPES: Final[dict[str, type[ServerFrame]]] = {
    "welcome": Welcome,
    "push": Push,
    "ack": Ack,
    "request": Request,
    "pong": Pong,
    "error": Error,
    "reconnect": Reconnect,
}
FRAME_TAGS: Final[dict[type[Any], str]] = {
    cls: tag for table in (CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES) for tag, cls in table.items()
}

"""The chat message model and the payloads of the built-in client events.

The classes describe shape and types (checked by the converter); bounds that an operator can
configure (text length, name length ...) are checked by :func:`validate_chat_message` and
:func:`validate_name` against :class:`PayloadLimits`.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any, Final, Literal

import attrs

from ._errors import ErrorCode, RemoteProtocolError
from ._frames import DEFAULT_NAMESPACE, RoomRef, StreamPosition

MessageType = Literal["text", "image", "file", "command"]
CommandAction = Literal["join", "leave", "mute", "kick"]


@attrs.frozen
class PayloadLimits:
    """Bounds on client payloads (all configurable on the node)."""

    max_text_chars: int = 4096
    max_name_chars: int = 128  # room, namespace, user and event names
    max_url_chars: int = 2048
    max_image_side: int = 20_000  # pixels
    max_file_bytes: int = 10 * 2**30
    max_status_chars: int = 128


@attrs.frozen
class TextPayload:
    content: str


@attrs.frozen
class ImagePayload:
    url: str
    width: int
    height: int


@attrs.frozen
class FilePayload:
    url: str
    size: int
    mime_type: str
    name: str | None = None


@attrs.frozen
class CommandPayload:
    action: CommandAction
    target: str


Payload = TextPayload | ImagePayload | FilePayload | CommandPayload

PAYLOAD_TYPES: Final[dict[str, type[Payload]]] = {
    "text": TextPayload,
    "image": ImagePayload,
    "file": FilePayload,
    "command": CommandPayload,
}


@attrs.frozen
class ChatMessage:
    """A chat message (event ``message``).

    ``message_id`` (a UUID) and ``timestamp`` (milliseconds since the epoch) may be left out by the
    client: the node fills them in. ``sender`` is always set by the node from the authenticated
    user; a client that states another sender is refused.
    """

    type: MessageType
    payload: Payload
    message_id: str | None = None
    timestamp: int | None = None
    sender: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)


# Built-in client events -------------------------------------------------------------------------


@attrs.frozen
class RoomArgs:
    """``room.join``, ``room.leave`` and ``room.members``."""

    room: str
    ns: str = DEFAULT_NAMESPACE

    def ref(self) -> RoomRef:
        return RoomRef(self.ns, self.room)


@attrs.frozen
class SendTarget:
    """Exactly one of: a room, a user, a list of users, everyone."""

    room: str | None = None
    ns: str = DEFAULT_NAMESPACE
    user: str | None = None
    users: list[str] | None = None
    all: bool = False

    @property
    def mode(self) -> str:
        """``room``, ``user``, ``users`` or ``all``."""
        room, user, users = self.room is not None, self.user is not None, self.users is not None
        if room + user + users + self.all != 1:
            raise RemoteProtocolError(
                ErrorCode.INVALID, "to: give exactly one of room, user, users, all"
            )
        return "room" if room else "user" if user else "users" if users else "all"


@attrs.frozen
class SendArgs:
    """``send``: deliver ``event`` with ``data`` to a target.

    ``event`` defaults to ``message``, whose data must be a :class:`ChatMessage`. A room send
    reaches the sender's own connections too unless ``except_self`` is set. ``volatile`` pushes
    carry no sequence number, are dropped first under load and are never replayed.
    With ``ack``, a room send reaches each member as a ``request`` and the sender's
    acknowledgement counts the members that acknowledged it (Socket.IO's broadcast acks).
    """

    to: SendTarget
    data: Any = None
    event: str = "message"
    except_self: bool = False
    volatile: bool = False
    ack: bool = False  # room sends only: deliver as requests and count the acknowledgements
    timeout: float = 5.0  # how long to wait for them, seconds


@attrs.frozen
class HistoryArgs:
    """``room.history``: the room's messages after ``since`` (a position in its stream), or
    the last ``limit`` of them."""

    room: str
    ns: str = DEFAULT_NAMESPACE
    since: StreamPosition | None = None
    limit: int = 50


@attrs.frozen
class TypingArgs:
    room: str
    typing: bool = True
    ns: str = DEFAULT_NAMESPACE


@attrs.frozen
class StatusArgs:
    """``status``: ``online``, ``away`` or any custom short status, with optional text."""

    status: str
    text: str | None = None


# Validation ---------------------------------------------------------------------------------------

_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
# Refused in names besides ASCII controls: other controls (Cc), format characters (Cf: the
# bidirectional overrides and isolates, zero-width spaces and joiners, the BOM, the soft hyphen),
# surrogates, private use, line and paragraph separators; and letters that render as nothing.
_NAME_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_INVISIBLE: Final = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
_MIME = re.compile(r"^[\w.+-]+/[\w.+-]+$")


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.INVALID, message)


def validate_name(kind: str, value: str, limits: PayloadLimits) -> str:
    """Check a room, namespace, user or event name; return it in Unicode normal form C.

    Two names that look the same are the same name (NFC: ``e`` + combining acute is ``é``),
    and a name cannot hide what it is: bidirectional controls and invisible characters are
    refused. ASCII names, the common case, pay one regular expression.
    """
    if not value:
        raise _invalid(f"{kind}: must not be empty")
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
        if any(unicodedata.category(c) in _NAME_CATEGORIES or c in _INVISIBLE for c in value):
            raise _invalid(f"{kind}: invisible or bidirectional control characters are not allowed")
    if len(value) > limits.max_name_chars:
        raise _invalid(f"{kind}: longer than {limits.max_name_chars} characters")
    if _NAME_FORBIDDEN.search(value):
        raise _invalid(f"{kind}: control characters are not allowed")
    return value


def _validate_url(url: str, limits: PayloadLimits) -> None:
    if len(url) > limits.max_url_chars:
        raise _invalid(f"payload.url: longer than {limits.max_url_chars} characters")
    if not url.startswith(("https://", "http://")):
        raise _invalid("payload.url: must be an http or https URL")


def validate_chat_message(msg: ChatMessage, limits: PayloadLimits) -> None:
    """Check the bounds of a chat message; raise :class:`RemoteProtocolError` (``invalid``)."""
    expected = PAYLOAD_TYPES[msg.type]
    if not isinstance(msg.payload, expected):
        raise _invalid(f"payload: does not match message type {msg.type!r}")
    if msg.message_id is not None:
        try:
            uuid.UUID(msg.message_id)
        except ValueError:
            raise _invalid("messageId: not a UUID") from None
    if msg.timestamp is not None and msg.timestamp < 0:
        raise _invalid("timestamp: must not be negative")
    payload = msg.payload
    if isinstance(payload, TextPayload):
        if not payload.content:
            raise _invalid("payload.content: must not be empty")
        if len(payload.content) > limits.max_text_chars:
            raise _invalid(f"payload.content: longer than {limits.max_text_chars} characters")
    elif isinstance(payload, ImagePayload):
        _validate_url(payload.url, limits)
        for side, value in (("width", payload.width), ("height", payload.height)):
            if not 0 < value <= limits.max_image_side:
                raise _invalid(f"payload.{side}: must be within 1..{limits.max_image_side}")
    elif isinstance(payload, FilePayload):
        _validate_url(payload.url, limits)
        if not 0 <= payload.size <= limits.max_file_bytes:
            raise _invalid(f"payload.size: must be within 0..{limits.max_file_bytes}")
        if not _MIME.fullmatch(payload.mime_type):
            raise _invalid("payload.mimeType: not a MIME type")
        if payload.name is not None:
            validate_name("payload.name", payload.name, limits)
    else:
        validate_name("payload.target", payload.target, limits)

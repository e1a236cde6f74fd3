"""The sans-I/O protocol core: codec, chat model, push templates, session, close codes.

Plain synchronous tests; the property tests keep hypothesis small (no example database, a few
hundred examples each) so that the whole file runs in a few seconds.
"""

from __future__ import annotations

import re
import string
import uuid
from pathlib import Path
from typing import Any

import attrs
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomd.protocol import (
    CLOSE_CODES,
    Ack,
    ChatMessage,
    CloseCode,
    CommandPayload,
    Error,
    ErrorCode,
    ErrorInfo,
    Event,
    FilePayload,
    HeartbeatInfo,
    Hello,
    ImagePayload,
    LimitsInfo,
    LocalProtocolError,
    PayloadLimits,
    Ping,
    Pong,
    Push,
    PushTemplate,
    Reconnect,
    RemoteProtocolError,
    Request,
    ResumeRequest,
    RoomArgs,
    RoomPosition,
    RoomRef,
    SendArgs,
    SendTarget,
    Session,
    SessionState,
    StatusArgs,
    StreamPosition,
    TextPayload,
    TypingArgs,
    Welcome,
    close_info,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
    load,
    should_reconnect,
    structure,
    unstructure,
    validate_chat_message,
    validate_name,
    wire_name,
)
from roomd.protocol._codec import converter, make_converter
from roomd.protocol._session import DEDUPE_WINDOW

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
ENCODINGS = pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
ERROR_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}
UUID = "9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"


def wire(frame: Any, binary: bool = False) -> dict[str, Any]:
    """What ``frame`` looks like on the wire, parsed back into plain data."""
    return load(encode_frame(frame, binary), binary)


def raw(obj: dict[str, Any], binary: bool) -> bytes:
    return msgpack.packb(obj) if binary else orjson.dumps(obj)


def refused(call: Any, *args: Any) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        call(*args)
    return info.value


WELCOME = Welcome(
    v=1,
    session="s1",
    resume_token="tok",
    node="serverA",
    user="alice",
    heartbeat=HeartbeatInfo(20.0, 45.0),
    limits=LimitsInfo(
        max_frame_bytes=65536, rate=50.0, burst=100, max_rooms=100, max_text_chars=4096
    ),
    resumed=False,
    seq=0,
)
CHAT = unstructure(
    ChatMessage("text", TextPayload("hi"), message_id=UUID, timestamp=1_700_000_000_000, sender="a")
)

CLIENT_FRAMES = {
    "hello": Hello(1),
    "hello-full": Hello(1, resume=ResumeRequest("s0", "tok", 41), client="roomd-js/0.3"),
    "hello-resume": Hello(
        1,
        resume=ResumeRequest(
            "s0",
            "tok",
            41,
            rooms=[RoomPosition("/", "lobby", "a1b2c3d4", 17)],
            inbox=StreamPosition("0f0f0f0f", 3),
        ),
    ),
    "event": Event("users.online"),
    "event-full": Event("send", {"to": {"room": "lobby"}, "data": CHAT}, id=7, cmid="c-1"),
    "ack": Ack(3, {"confirmed": True}),
    "ack-error": Ack(4, error=ErrorInfo("declined", "no")),
    "ping": Ping(1732240000.125),
}
SERVER_FRAMES = {
    "welcome": WELCOME,
    "welcome-resumed": attrs.evolve(WELCOME, resumed=True, seq=12, replayed=3),
    "welcome-refused": attrs.evolve(WELCOME, reason="expired"),
    "welcome-gaps": attrs.evolve(
        WELCOME, resumed=True, seq=12, gaps=[RoomRef("/", "busy")], inbox_gap=True
    ),
    "push": Push("typing", {"ns": "/", "room": "lobby", "user": "a", "typing": True}),
    "push-room": Push("message", CHAT, seq=3, room=RoomRef("/", "lobby"), sender="alice"),
    "push-users": Push("message", CHAT, seq=4, sender="alice", to=["bob", "carol"]),
    "push-stream": Push(
        "message", CHAT, seq=5, room=RoomRef("/", "lobby"), epoch="a1b2c3d4", offset=18
    ),
    "ack": Ack(7, {"ns": "/", "room": "lobby", "members": ["alice"]}),
    "ack-null": Ack(8),
    "ack-error": Ack(9, error=ErrorInfo("not_in_room", "not in room 'x' of '/'")),
    "request": Request(1, "confirm", {"q": "?"}),
    "request-timeout": Request(2, "confirm", timeout=30.0),
    "pong": Pong(1.5, 1732240000.163),
    "error": Error("unknown_type", "unknown client frame type 'x'"),
    "error-ref": Error("handshake_required", "the first frame must be hello", ref=4),
    "reconnect": Reconnect("ws://127.0.0.1:9001/ws", "serverB"),
}


# Round trips and wire form ------------------------------------------------------------------------


@ENCODINGS
@pytest.mark.parametrize("frame", CLIENT_FRAMES.values(), ids=CLIENT_FRAMES.keys())
def test_client_frames_round_trip(frame: Any, binary: bool) -> None:
    encoded = encode_frame(frame, binary)
    assert isinstance(encoded, bytes)
    assert decode_client_frame(encoded, binary) == frame


@ENCODINGS
@pytest.mark.parametrize("frame", SERVER_FRAMES.values(), ids=SERVER_FRAMES.keys())
def test_server_frames_round_trip(frame: Any, binary: bool) -> None:
    assert decode_server_frame(encode_frame(frame, binary), binary) == frame


def test_text_frames_decode_from_str() -> None:
    assert decode_client_frame('{"type":"ping","ts":2}', False) == Ping(2.0)


def test_wire_form_is_camel_case_and_omits_defaults() -> None:
    assert wire(Event("users.online")) == {"type": "event", "event": "users.online"}
    assert wire(Ack(8)) == {"type": "ack", "id": 8}
    assert wire(Request(1, "x")) == {"type": "request", "id": 1, "event": "x"}
    assert wire(Request(1, "x", timeout=5)) == {
        "type": "request",
        "id": 1,
        "event": "x",
        "timeout": 5,
    }
    assert wire(Pong(1.0, 2.0)) == {"type": "pong", "ts": 1.0, "serverTs": 2.0}
    assert wire(SERVER_FRAMES["push-room"]) == {
        "type": "push",
        "event": "message",
        "data": CHAT,
        "seq": 3,
        "room": {"ns": "/", "room": "lobby"},
        "from": "alice",
    }
    welcome = wire(WELCOME)
    assert welcome["resumeToken"] == "tok" and welcome["resumed"] is False and welcome["seq"] == 0
    assert welcome["limits"] == {
        "maxFrameBytes": 65536,
        "rate": 50.0,
        "burst": 100,
        "maxRooms": 100,
        "maxTextChars": 4096,
    }


def test_wire_names() -> None:
    assert wire_name("resume_token") == "resumeToken"
    assert wire_name("max_frame_bytes") == "maxFrameBytes"
    assert wire_name("sender", Push) == "from"
    assert wire_name("sender", ChatMessage) == "sender"


def test_chat_message_sender_keeps_its_name() -> None:
    assert CHAT["sender"] == "a" and "from" not in CHAT
    message = structure({"type": "text", "payload": {"content": "x"}, "sender": "bob"}, ChatMessage)
    assert message.sender == "bob"
    assert unstructure(ChatMessage("file", FilePayload("https://x/f", 3, "a/b"))) == {
        "type": "file",
        "payload": {"url": "https://x/f", "size": 3, "mimeType": "a/b"},
    }


@ENCODINGS
def test_decode_fills_in_defaults(binary: bool) -> None:
    assert decode_client_frame(raw({"type": "event", "event": "x"}, binary), binary) == Event(
        "x", None, None, None
    )
    request = decode_server_frame(raw({"type": "request", "id": 1, "event": "x"}, binary), binary)
    assert request == Request(1, "x", None, 10.0)
    assert structure({"room": "lobby"}, RoomArgs) == RoomArgs("lobby", "/")
    assert structure({"to": {"user": "bob"}}, SendArgs) == SendArgs(
        SendTarget(user="bob"), None, "message", False, False
    )
    assert structure({"room": "r"}, TypingArgs) == TypingArgs("r", True, "/")


@ENCODINGS
def test_null_means_absent_for_optional_fields(binary: bool) -> None:
    frame = {"type": "event", "event": "x", "id": None, "cmid": None}
    assert decode_client_frame(raw(frame, binary), binary) == Event("x")


@ENCODINGS
def test_unknown_fields_are_ignored(binary: bool) -> None:
    hello = {"type": "hello", "v": 1, "future": {"a": [1, 2]}, "resume": None, "x-y": 3}
    assert decode_client_frame(raw(hello, binary), binary) == Hello(1)
    welcome = wire(WELCOME)
    welcome["heartbeat"]["jitter"] = 0.1
    welcome["limits"]["maxSomethingNew"] = 5
    welcome["features"] = ["resume"]
    assert decode_server_frame(raw(welcome, binary), binary) == WELCOME
    push = {"type": "push", "event": "x", "room": {"ns": "/", "room": "r", "shard": 3}}
    assert decode_server_frame(raw(push, binary), binary) == Push("x", room=RoomRef("/", "r"))
    assert structure({"to": {"user": "b", "priority": 1}, "ttl": 5}, SendArgs).to.user == "b"


# Validation errors --------------------------------------------------------------------------------


STRICT_CASES = {
    "string-for-int": ({"type": "hello", "v": "1"}, "v: expected an integer"),
    "bool-for-int": ({"type": "event", "event": "x", "id": True}, "id: expected an integer"),
    "float-for-int": ({"type": "ack", "id": 1.0}, "id: expected an integer"),
    "int-for-string": ({"type": "event", "event": 5}, "event: expected a string"),
    "bool-for-number": ({"type": "ping", "ts": True}, "ts: expected a number"),
    "string-for-number": ({"type": "ping", "ts": "1"}, "ts: expected a number"),
    "string-for-object": ({"type": "hello", "v": 1, "resume": "s0"}, "resume: expected an object"),
    "nested-missing": (
        {"type": "hello", "v": 1, "resume": {"session": "s"}},
        "resume.token: required field missing; resume.seq: required field missing",
    ),
    "nested-type": (
        {"type": "ack", "id": 1, "error": {"code": "x", "message": 2}},
        "error.message: expected a string",
    ),
    "missing": ({"type": "event"}, "event: required field missing"),
}


@ENCODINGS
@pytest.mark.parametrize("frame, message", STRICT_CASES.values(), ids=STRICT_CASES.keys())
def test_types_are_strict(frame: dict[str, Any], message: str, binary: bool) -> None:
    exc = refused(decode_client_frame, raw(frame, binary), binary)
    assert exc.code == ErrorCode.INVALID
    assert message in exc.message
    assert exc.close_code is None


@ENCODINGS
def test_server_frame_types_are_strict(binary: bool) -> None:
    push = {"type": "push", "event": "x", "to": "bob"}
    assert refused(decode_server_frame, raw(push, binary), binary).message == "to: expected a list"
    push = {"type": "push", "event": "x", "room": {"ns": "/", "room": 1}}
    assert (
        "room.room: expected a string"
        in refused(decode_server_frame, raw(push, binary), binary).message
    )
    welcome = wire(WELCOME)
    welcome["limits"]["maxRooms"] = "100"
    exc = refused(decode_server_frame, raw(welcome, binary), binary)
    assert exc.message == "limits.maxRooms: expected an integer"


PATH_CASES = {
    "width": (
        {"type": "image", "payload": {"url": "https://x", "width": "1", "height": 2}},
        ChatMessage,
        "payload.width: expected an integer",
    ),
    "width-bool": (
        {"type": "image", "payload": {"url": "https://x", "width": True, "height": 2}},
        ChatMessage,
        "payload.width: expected an integer",
    ),
    "content": (
        {"type": "text", "payload": {"content": 1}},
        ChatMessage,
        "payload.content: expected a string",
    ),
    "literal": (
        {"type": "video", "payload": {"content": "x"}},
        ChatMessage,
        "type: expected one of 'text', 'image', 'file', 'command'",
    ),
    "action": (
        {"type": "command", "payload": {"action": "ban", "target": "bob"}},
        ChatMessage,
        "payload.action: expected one of 'join', 'leave', 'mute', 'kick'",
    ),
    "metadata": (
        {"type": "text", "payload": {"content": "x"}, "metadata": []},
        ChatMessage,
        "metadata: expected an object",
    ),
    "timestamp": (
        {"type": "text", "payload": {"content": "x"}, "timestamp": "now"},
        ChatMessage,
        "timestamp: expected an integer",
    ),
    "users-string": ({"to": {"users": "bob"}}, SendArgs, "to.users: expected a list"),
    "users-item": ({"to": {"users": ["bob", 1]}}, SendArgs, "to.users: expected a string"),
    "camel-path": (
        {"to": {"user": "b"}, "exceptSelf": 1},
        SendArgs,
        "exceptSelf: expected a boolean",
    ),
    "room": ({"ns": "/"}, RoomArgs, "room: required field missing"),
    "typing": ({"room": "r", "typing": "yes"}, TypingArgs, "typing: expected a boolean"),
    "status": ({"status": None}, StatusArgs, "status: expected a string"),
    "not-object": ([], RoomArgs, "expected an object"),
}


@pytest.mark.parametrize("data, cls, message", PATH_CASES.values(), ids=PATH_CASES.keys())
def test_validation_errors_name_the_wire_path(data: Any, cls: type[Any], message: str) -> None:
    exc = refused(structure, data, cls)
    assert exc.code == ErrorCode.INVALID
    assert exc.message == message


def test_structure_errors_carry_ref() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        structure({"room": 1}, RoomArgs, ref=5)
    assert info.value.ref == 5


@ENCODINGS
def test_invalid_frame_keeps_its_id_as_ref(binary: bool) -> None:
    exc = refused(decode_client_frame, raw({"type": "event", "id": 12}, binary), binary)
    assert (exc.code, exc.ref) == (ErrorCode.INVALID, 12)
    exc = refused(decode_client_frame, raw({"type": "event", "id": "12"}, binary), binary)
    assert exc.ref is None
    exc = refused(decode_client_frame, raw({"type": "event", "id": True}, binary), binary)
    assert exc.ref is None


@ENCODINGS
def test_unknown_type(binary: bool) -> None:
    exc = refused(decode_client_frame, raw({"type": "subscribe", "id": 4}, binary), binary)
    assert (exc.code, exc.ref, exc.close_code) == (ErrorCode.UNKNOWN_TYPE, 4, None)
    assert "'subscribe'" in exc.message and "hello, event, ack, ping" in exc.message
    for frame in ({"id": 1}, {"type": 3}, {"type": ["event"]}, {"type": "welcome"}):
        assert refused(decode_client_frame, raw(frame, binary), binary).code == "unknown_type"
    for frame in ({"type": "hello", "v": 1}, {"type": "ping", "ts": 1}, {"type": "event"}):
        assert refused(decode_server_frame, raw(frame, binary), binary).code == "unknown_type"


BAD_FRAMES = {
    "json-garbage": (b"{not json", False, "not valid JSON"),
    "json-array": (b"[]", False, "a frame must be an object"),
    "json-string": (b'"hello"', False, "a frame must be an object"),
    "json-empty": (b"", False, "not valid JSON"),
    "json-surrogate": ('{"type":"event","event":"\ud800"}', False, "not valid JSON"),
    "json-bad-utf8": (b'{"type":"\xff"}', False, "not valid JSON"),
    "msgpack-garbage": (b"\xc1", True, "not valid msgpack"),
    "msgpack-trailing": (
        msgpack.packb({"type": "ping", "ts": 1}) + b"\x00",
        True,
        "not valid msgpack",
    ),
    "msgpack-list": (msgpack.packb([1, 2]), True, "a frame must be an object"),
    "msgpack-int-key": (msgpack.packb({1: 2}), True, "not valid msgpack"),
    "msgpack-truncated": (msgpack.packb({"type": "ping", "ts": 1})[:-3], True, "not valid msgpack"),
    "json-deep": (b"[" * 5000 + b"]" * 5000, False, "not valid JSON"),
    "msgpack-deep": (b"\x91" * 100_000 + b"\xc0", True, "not valid msgpack"),
}


@pytest.mark.parametrize("data, binary, message", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frames(data: bytes | str, binary: bool, message: str) -> None:
    for decode in (decode_client_frame, decode_server_frame):
        exc = refused(decode, data, binary)
        assert (exc.code, exc.message, exc.ref) == (ErrorCode.BAD_FRAME, message, None)


# Chat messages and built-in event payloads --------------------------------------------------------

LIMITS = PayloadLimits(
    max_text_chars=10,
    max_name_chars=8,
    max_url_chars=40,
    max_image_side=100,
    max_file_bytes=1000,
    max_status_chars=5,
)

VALID_MESSAGES = {
    "text": {"type": "text", "payload": {"content": "x" * 10}},
    "text-full": {
        "type": "text",
        "payload": {"content": "héllo"},
        "messageId": UUID,
        "timestamp": 0,
        "sender": "alice",
        "metadata": {"replyTo": None, "tags": ["a"]},
    },
    "image": {"type": "image", "payload": {"url": "https://x.io/a.png", "width": 100, "height": 1}},
    "image-http": {"type": "image", "payload": {"url": "http://x.io/a", "width": 1, "height": 1}},
    "file": {
        "type": "file",
        "payload": {"url": "https://x.io/f", "size": 1000, "mimeType": "application/vnd.a+json"},
    },
    "file-empty": {
        "type": "file",
        "payload": {"url": "https://x.io/f", "size": 0, "mimeType": "text/plain", "name": "a.txt"},
    },
    "command": {"type": "command", "payload": {"action": "mute", "target": "bob"}},
}


@pytest.mark.parametrize("data", VALID_MESSAGES.values(), ids=VALID_MESSAGES.keys())
def test_valid_chat_messages(data: dict[str, Any]) -> None:
    message = structure(data, ChatMessage)
    validate_chat_message(message, LIMITS)
    assert unstructure(message) == data


def _image(width: Any, height: Any = 10, url: str = "https://x.io/a") -> dict[str, Any]:
    return {"type": "image", "payload": {"url": url, "width": width, "height": height}}


def _file(
    size: Any = 1, mime: str = "text/plain", url: str = "https://x.io/f", **extra: Any
) -> Any:
    return {"type": "file", "payload": {"url": url, "size": size, "mimeType": mime, **extra}}


INVALID_MESSAGES = {
    "text-empty": (
        {"type": "text", "payload": {"content": ""}},
        "payload.content: must not be empty",
    ),
    "text-long": (
        {"type": "text", "payload": {"content": "x" * 11}},
        "payload.content: longer than 10 characters",
    ),
    "uuid": (
        {"type": "text", "payload": {"content": "x"}, "messageId": "123"},
        "messageId: not a UUID",
    ),
    "timestamp": (
        {"type": "text", "payload": {"content": "x"}, "timestamp": -1},
        "timestamp: must not be negative",
    ),
    "width-zero": (_image(0), "payload.width: must be within 1..100"),
    "width-big": (_image(101), "payload.width: must be within 1..100"),
    "height-negative": (_image(5, -3), "payload.height: must be within 1..100"),
    "url-scheme": (_image(5, url="ftp://x.io/a"), "payload.url: must be an http or https URL"),
    "url-javascript": (
        _image(5, url="javascript:alert(1)"),
        "payload.url: must be an http or https",
    ),
    "url-long": (
        _image(5, url="https://x.io/" + "a" * 30),
        "payload.url: longer than 40 characters",
    ),
    "file-size": (_file(1001), "payload.size: must be within 0..1000"),
    "file-negative": (_file(-1), "payload.size: must be within 0..1000"),
    "mime-plain": (_file(mime="textplain"), "payload.mimeType: not a MIME type"),
    "mime-space": (_file(mime="text/ plain"), "payload.mimeType: not a MIME type"),
    "mime-newline": (_file(mime="text/plain\n"), "payload.mimeType: not a MIME type"),
    "mime-params": (_file(mime="text/plain; charset=utf-8"), "payload.mimeType: not a MIME type"),
    "file-url": (_file(url="file:///etc/passwd"), "payload.url: must be an http or https URL"),
    "file-name": (_file(name="a" * 9), "payload.name: longer than 8 characters"),
    "target-empty": (
        {"type": "command", "payload": {"action": "kick", "target": ""}},
        "payload.target: must not be empty",
    ),
}


@pytest.mark.parametrize("data, message", INVALID_MESSAGES.values(), ids=INVALID_MESSAGES.keys())
def test_invalid_chat_messages(data: dict[str, Any], message: str) -> None:
    parsed = structure(data, ChatMessage)
    with pytest.raises(RemoteProtocolError) as info:
        validate_chat_message(parsed, LIMITS)
    assert info.value.code == ErrorCode.INVALID
    assert info.value.message.startswith(message)


def test_payload_follows_the_message_type() -> None:
    # Extra fields named like another payload's are ignored like any unknown field.
    data = {"type": "text", "payload": {"content": "hi", "width": 5, "size": 1, "target": "x"}}
    assert structure(data, ChatMessage).payload == TextPayload("hi")
    image = {"type": "text", "payload": {"url": "https://x.io/a", "width": 1, "height": 1}}
    assert (
        refused(structure, image, ChatMessage).message == "payload.content: required field missing"
    )
    file = {"type": "file", "payload": {"url": "https://x.io/f", "size": 1}}
    assert (
        refused(structure, file, ChatMessage).message == "payload.mimeType: required field missing"
    )
    bad = {"type": "image", "payload": "https://x.io/a"}
    assert refused(structure, bad, ChatMessage).message == "payload: expected an object"
    mismatch = ChatMessage("text", ImagePayload("https://x.io/a", 1, 1))
    exc = refused(validate_chat_message, mismatch, LIMITS)
    assert exc.message == "payload: does not match message type 'text'"


def test_default_limits_are_wider() -> None:
    message = structure({"type": "text", "payload": {"content": "x" * 4096}}, ChatMessage)
    validate_chat_message(message, PayloadLimits())
    too_long = attrs.evolve(message, payload=TextPayload("x" * 4097))
    assert "4096" in refused(validate_chat_message, too_long, PayloadLimits()).message
    validate_chat_message(structure(_image(20_000, 20_000), ChatMessage), PayloadLimits())


def test_message_id_accepts_uuids() -> None:
    for value in (UUID, str(uuid.uuid4()), UUID.upper()):
        message = ChatMessage("text", TextPayload("x"), message_id=value)
        validate_chat_message(message, LIMITS)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("", "must not be empty"),
        ("a" * 9, "longer than 8"),
        ("a\nb", "control"),
        ("a\x7f", "control"),
    ],
)
def test_validate_name_refuses(value: str, problem: str) -> None:
    exc = refused(validate_name, "room", value, LIMITS)
    assert exc.message.startswith("room: ") and problem in exc.message


def test_validate_name_accepts() -> None:
    for value in ("lobby", "a" * 8, "café ☕", "/"):
        assert validate_name("room", value, LIMITS) == value


@pytest.mark.parametrize(
    "target, mode",
    [
        ({"room": "lobby"}, "room"),
        ({"room": "lobby", "ns": "/game", "all": False}, "room"),
        ({"user": "bob"}, "user"),
        ({"users": ["bob", "carol"]}, "users"),
        ({"users": []}, "users"),
        ({"all": True}, "all"),
        ({"room": None, "user": "bob"}, "user"),
    ],
)
def test_send_target_mode(target: dict[str, Any], mode: str) -> None:
    assert structure(target, SendTarget).mode == mode


@pytest.mark.parametrize(
    "target",
    [{}, {"all": False}, {"ns": "/"}, {"room": "r", "user": "b"}, {"user": "b", "all": True}],
)
def test_send_target_needs_exactly_one(target: dict[str, Any]) -> None:
    exc = refused(lambda: structure(target, SendTarget).mode)
    assert exc.code == ErrorCode.INVALID
    assert exc.message == "to: give exactly one of room, user, users, all"


def test_room_args_ref() -> None:
    assert structure({"room": "r", "ns": "/g"}, RoomArgs).ref() == RoomRef("/g", "r")


# Push templates -----------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
names = st.text(min_size=1, max_size=10)
pushes = st.builds(
    Push,
    event=names,
    data=json_values,
    room=st.none() | st.builds(RoomRef, names, names),
    sender=st.none() | names,
    to=st.none() | st.lists(names, max_size=3),
)


@FAST
@given(
    push=pushes, seq=st.none() | st.integers(min_value=0, max_value=2**63 - 1), binary=st.booleans()
)
def test_push_template_render_equals_full_encode(push: Push, seq: int | None, binary: bool) -> None:
    template = PushTemplate.of(push)
    rendered = template.render(seq, binary)
    full = attrs.evolve(push, seq=seq)
    assert load(rendered, binary) == load(encode_frame(full, binary), binary)
    assert decode_server_frame(rendered, binary) == full
    assert template.render(seq, binary) == rendered  # the cached body is reused unchanged


def test_push_template_volatile_has_no_seq() -> None:
    template = PushTemplate.of(Push("typing", {"user": "a"}), volatile=True)
    assert template.volatile
    for binary in (False, True):
        assert load(template.render(None, binary), binary) == {
            "type": "push",
            "event": "typing",
            "data": {"user": "a"},
        }


def test_push_template_refuses_seq_and_unencodable_data() -> None:
    with pytest.raises(ValueError):
        PushTemplate.of(Push("x", seq=1))
    with pytest.raises(TypeError):
        PushTemplate.of(Push("x", {"raw": b"\x00"}))
    with pytest.raises(TypeError):
        PushTemplate.of(Push("x", {1, 2}))


# Session state machine ----------------------------------------------------------------------------


def test_session_starts_in_handshake() -> None:
    session = Session("alice")
    assert session.state is SessionState.HANDSHAKE and not session.is_open
    assert session.user == "alice" and session.seq == 0
    other = Session("alice")
    assert session.id != other.id
    assert session.resume_token == ""  # (the node sets a signed one at the welcome)
    assert Session("bob", "fixed-id").id == "fixed-id"


def test_hello_opens_the_session() -> None:
    session = Session("alice")
    session.receive(Hello(1))
    assert session.state is SessionState.OPEN and session.is_open


def test_unsupported_version_closes_with_4002() -> None:
    session = Session("alice")
    for v in (0, 2, -1):
        exc = refused(session.receive, Hello(v))
        assert exc.code == ErrorCode.UNSUPPORTED_VERSION
        assert exc.close_code == CloseCode.UNSUPPORTED_VERSION == 4002
        assert f"protocol version {v} is not supported" in exc.message
    assert session.state is SessionState.HANDSHAKE


@pytest.mark.parametrize(
    "frame, ref",
    [(Event("room.join", {"room": "r"}, id=3), 3), (Event("x"), None), (Ack(9), 9)],
)
def test_frames_before_hello_close_with_4003(frame: Any, ref: int | None) -> None:
    session = Session("alice")
    exc = refused(session.receive, frame)
    assert exc.code == ErrorCode.HANDSHAKE_REQUIRED
    assert exc.close_code == CloseCode.BAD_HANDSHAKE == 4003
    assert exc.ref == ref
    assert not session.is_open


def test_ping_is_allowed_before_hello() -> None:
    session = Session("alice")
    session.receive(Ping(1.0))
    assert session.state is SessionState.HANDSHAKE
    session.receive(Hello(1))
    session.receive(Ping(2.0))
    assert session.is_open


def test_hello_twice_is_refused_without_closing() -> None:
    session = Session("alice")
    session.receive(Hello(1))
    exc = refused(session.receive, Hello(1))
    assert exc.code == ErrorCode.INVALID and exc.close_code is None
    assert session.is_open


def test_open_session_accepts_events_and_acks() -> None:
    session = Session("alice")
    session.receive(Hello(1))
    session.receive(Event("x", id=1))
    session.receive(Ack(1, "ok"))
    assert session.is_open


def test_closed_session_refuses_frames_locally() -> None:
    session = Session("alice")
    session.receive(Hello(1))
    session.close()
    assert session.state is SessionState.CLOSED and not session.is_open
    with pytest.raises(LocalProtocolError):
        session.receive(Ping(1.0))


def test_seq_and_request_ids_count_from_one() -> None:
    session = Session("alice")
    assert [session.next_seq() for _ in range(3)] == [1, 2, 3]
    assert session.seq == 3
    assert [session.next_request_id() for _ in range(2)] == [1, 2]
    assert session.seq == 3  # request ids are numbered apart from pushes


def test_cmid_dedupe_remembers_results() -> None:
    session = Session("alice")
    assert session.seen("c1") == (False, None)
    session.remember("c1", {"messageId": UUID})
    session.remember("c2", None)
    assert session.seen("c1") == (True, {"messageId": UUID})
    assert session.seen("c2") == (True, None)
    assert session.seen("c3") == (False, None)


def test_cmid_dedupe_window_is_bounded() -> None:
    session = Session("alice")
    total = DEDUPE_WINDOW + 10
    for n in range(total):
        session.remember(f"c{n}", n)
    forgotten = [n for n in range(total) if not session.seen(f"c{n}")[0]]
    assert forgotten == list(range(10))  # the oldest go first
    assert session.seen(f"c{total - 1}") == (True, total - 1)
    assert session.seen(f"c{total - DEDUPE_WINDOW}") == (True, total - DEDUPE_WINDOW)


# Close codes --------------------------------------------------------------------------------------

EXPECTED_RECONNECT = {
    1000: False,
    1001: True,
    1002: False,
    1006: True,
    1008: False,
    1009: True,
    1011: True,
    1013: True,
    4000: True,
    4001: False,
    4002: False,
    4003: False,
    4004: True,
    4008: True,
    4009: True,
    4010: False,
    4011: False,
    4012: False,
}


def test_close_table_covers_every_code() -> None:
    assert set(CLOSE_CODES) == {int(code) for code in CloseCode} == set(EXPECTED_RECONNECT)
    for code, info in CLOSE_CODES.items():
        assert info.code == code and close_info(code) is info
        assert 0 < len(info.reason.encode()) <= 123
        assert info.meaning.endswith(".")


@pytest.mark.parametrize("code, reconnect", EXPECTED_RECONNECT.items())
def test_should_reconnect_known_codes(code: int, reconnect: bool) -> None:
    assert should_reconnect(code) is reconnect
    assert CLOSE_CODES[code].reconnect is reconnect


@pytest.mark.parametrize(
    "code, reconnect",
    [
        (None, True),
        (1005, True),
        (1012, True),
        (3000, True),
        (4005, True),
        (4499, True),
        (4500, False),
        (4700, False),
        (4999, False),
        (5000, True),
    ],
)
def test_should_reconnect_unknown_codes(code: int | None, reconnect: bool) -> None:
    assert should_reconnect(code) is reconnect
    if code is not None:
        assert close_info(code) is None


# The documentation agrees with the code -----------------------------------------------------------


def _section(title: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_docs_close_code_table_matches_close_codes() -> None:
    row = re.compile(r"^\| (\d{4}) \| `(\w+)` \| ([^|]+) \| (reconnect|terminal) \| ([^|]+) \|$")
    documented = {
        int(m[1]): (m[2], m[3], m[4] == "reconnect", m[5])
        for line in _section("Close codes").splitlines()
        if (m := row.match(line))
    }
    assert documented == {
        code: (info.code.name, info.reason, info.reconnect, info.meaning)
        for code, info in CLOSE_CODES.items()
    }


def test_docs_error_code_table_matches_error_codes() -> None:
    row = re.compile(r"^\| `([a-z_]+)` \|")
    documented = {m[1] for line in _section("Error codes").splitlines() if (m := row.match(line))}
    assert documented == ERROR_CODES


# Fuzzing: the decoders raise nothing but RemoteProtocolError --------------------------------------

CLIENT_TAGS = ["hello", "event", "ack", "ping"]
SERVER_TAGS = ["welcome", "push", "ack", "request", "pong", "error"]
FRAME_CLASSES = [
    Hello,
    ResumeRequest,
    Event,
    Ack,
    ErrorInfo,
    Ping,
    Pong,
    Welcome,
    HeartbeatInfo,
    LimitsInfo,
    Push,
    RoomRef,
    Request,
    Error,
]
ARG_CLASSES = [
    ChatMessage,
    TextPayload,
    ImagePayload,
    FilePayload,
    CommandPayload,
    RoomArgs,
    SendTarget,
    SendArgs,
    TypingArgs,
    StatusArgs,
]
WIRE_KEYS = sorted(
    {"type"}
    | {wire_name(f.name, cls) for cls in FRAME_CLASSES + ARG_CLASSES for f in attrs.fields(cls)}
)
keys = st.sampled_from(WIRE_KEYS) | st.text(string.ascii_letters, max_size=4)
leaves = (
    json_scalars
    | st.sampled_from(CLIENT_TAGS + SERVER_TAGS + ["text", "image", "file", "command", "kick"])
    | st.sampled_from(["https://x.io/a", "a/b", UUID, "/", ""])
)
fuzz_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=20,
)
fuzz_objects = st.dictionaries(keys, fuzz_values, max_size=10)
random_frames = st.builds(
    lambda tag, body: {**body, "type": tag} if tag is not None else body,
    st.none() | st.sampled_from(CLIENT_TAGS + SERVER_TAGS) | json_scalars,
    fuzz_objects,
)


def _mutations(base: dict[str, Any], keep: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """``base`` with fields dropped, replaced by garbage, or joined by extra fields."""
    fields = {k: st.just(v) | fuzz_values for k, v in base.items() if k not in keep}
    return st.builds(
        lambda body, extra: {**extra, **body, **{k: base[k] for k in keep}},
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(keys, fuzz_values, max_size=3),
    )


SAMPLE_WIRE = [wire(f) for f in [*CLIENT_FRAMES.values(), *SERVER_FRAMES.values()]]
frame_objects = (
    st.sampled_from(SAMPLE_WIRE).flatmap(lambda b: _mutations(b, ("type",))) | random_frames
)
ARG_SAMPLES = [
    *((ChatMessage, m) for m in VALID_MESSAGES.values()),
    (RoomArgs, {"room": "lobby", "ns": "/"}),
    (SendArgs, {"to": {"room": "lobby"}, "data": VALID_MESSAGES["text"], "exceptSelf": True}),
    (SendArgs, {"to": {"users": ["bob"]}, "event": "x", "volatile": True}),
    (SendTarget, {"user": "bob", "all": True}),
    (TypingArgs, {"room": "lobby", "typing": False}),
    (StatusArgs, {"status": "away", "text": "lunch"}),
]
arg_objects = st.sampled_from(ARG_SAMPLES).flatmap(
    lambda sample: st.tuples(st.just(sample[0]), _mutations(sample[1]))
) | st.tuples(st.sampled_from(ARG_CLASSES), fuzz_values | fuzz_objects)


def _decodes_or_refuses(decode: Any, data: bytes | str, binary: bool) -> None:
    try:
        frame = decode(data, binary)
    except RemoteProtocolError as exc:
        assert exc.code in ERROR_CODES
        assert exc.ref is None or type(exc.ref) is int
        return
    assert decode(encode_frame(frame, binary), binary) == frame


@FAST
@given(data=st.binary(max_size=64), binary=st.booleans())
def test_fuzz_decoders_on_bytes(data: bytes, binary: bool) -> None:
    _decodes_or_refuses(decode_client_frame, data, binary)
    _decodes_or_refuses(decode_server_frame, data, binary)


@FAST
@given(data=st.text(max_size=64))
def test_fuzz_decoders_on_text(data: str) -> None:
    _decodes_or_refuses(decode_client_frame, data, False)
    _decodes_or_refuses(decode_server_frame, data, False)


@FAST
@given(obj=frame_objects, binary=st.booleans())
def test_fuzz_decoders_on_frame_objects(obj: dict[str, Any], binary: bool) -> None:
    data = raw(obj, binary)
    _decodes_or_refuses(decode_client_frame, data, binary)
    _decodes_or_refuses(decode_server_frame, data, binary)


@FAST
@given(
    obj=frame_objects,
    extra=st.dictionaries(keys, st.binary(max_size=4) | st.integers(-5, 5), max_size=3),
)
def test_fuzz_msgpack_only_values(obj: dict[str, Any], extra: dict[str, Any]) -> None:
    data = msgpack.packb({**obj, **extra, "data": [b"\x00", msgpack.ExtType(1, b"x")]})
    _decodes_or_refuses(decode_client_frame, data, True)
    _decodes_or_refuses(decode_server_frame, data, True)


@FAST
@given(case=arg_objects)
def test_fuzz_builtin_payloads(case: tuple[type[Any], Any]) -> None:
    cls, obj = case
    try:
        value = structure(obj, cls)
        if isinstance(value, ChatMessage):
            validate_chat_message(value, LIMITS)
        elif isinstance(value, SendArgs | SendTarget):
            target = value.to if isinstance(value, SendArgs) else value
            assert target.mode in ("room", "user", "users", "all")
    except RemoteProtocolError as exc:
        assert exc.code == ErrorCode.INVALID


QUICK_CONVERTER = make_converter(detailed=False)


def _outcome(conv: Any, obj: Any, cls: type[Any]) -> tuple[str, Any]:
    try:
        return "ok", conv.structure(obj, cls)
    except Exception:
        return "error", None


FIELD_VALUES = st.sampled_from(
    [
        *("x", "", "text", "kick", 0, 1, -1, 1.5, True, False, None, [], ["a"], [1], {}),
        *({"a": 1}, {"user": "b"}, {"room": "r", "ns": "n"}, {"ns": 1}),
        *({"code": "c", "message": "m"}, {"interval": 1, "timeout": 2.5}),
        {"session": "s", "token": "t", "seq": 3},
    ]
)


def _typed_objects(cls: type[Any]) -> st.SearchStrategy[tuple[type[Any], dict[str, Any]]]:
    """Objects with some of ``cls``'s fields, each a value of a plausible or a wrong type."""
    fields = {wire_name(f.name, cls): FIELD_VALUES for f in attrs.fields(cls)}
    return st.tuples(st.just(cls), st.fixed_dictionaries({}, optional=fields))


@settings(max_examples=500, deadline=None, database=None)
@given(
    case=st.sampled_from(FRAME_CLASSES + ARG_CLASSES).flatmap(_typed_objects)
    | arg_objects
    | st.tuples(st.sampled_from(FRAME_CLASSES), frame_objects)
)
def test_quick_structuring_agrees_with_the_detailed_converter(case: tuple[type[Any], Any]) -> None:
    """The quick converter (no error bookkeeping) accepts exactly what the detailed one does,
    with the same result: only the wording of errors is left to the detailed one."""
    cls, obj = case
    assert _outcome(QUICK_CONVERTER, obj, cls) == _outcome(converter, obj, cls)

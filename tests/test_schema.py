"""``roomd/protocol/schema.json`` agrees with the converter.

Every frame the codec produces validates; what the codec refuses, the schema refuses too (and the
other way round), checked on samples and on fuzzed frames. To validate frames from elsewhere (a
running node, for example) use :func:`validate_server_frame` and :func:`validate_client_frame`.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from roomd.protocol import (
    Ack,
    ChatMessage,
    CommandPayload,
    Error,
    ErrorCode,
    ErrorInfo,
    Event,
    FilePayload,
    HeartbeatInfo,
    Hello,
    HistoryArgs,
    ImagePayload,
    LimitsInfo,
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
    StatusArgs,
    StreamPosition,
    TextPayload,
    TypingArgs,
    Welcome,
    decode_client_frame,
    decode_server_frame,
    load,
    structure,
    unstructure,
    validate_chat_message,
    wire_name,
)
from roomd.protocol._frames import CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES
from roomd.protocol._schema import load_schema, schema_for
from tests.test_protocol import (
    CLIENT_FRAMES,
    ENCODINGS,
    FAST,
    SERVER_FRAMES,
    UUID,
    VALID_MESSAGES,
    _mutations,
    frame_objects,
    wire,
)

# Validators ---------------------------------------------------------------------------------------

# roomd's integers are JSON integer literals: 1.0 is a float, and so is not an integer (JSON Schema
# would accept it). The strict validator says so, which lets the tests compare schema and codec.
_STRICT_TYPES = Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: type(value) is int
)
StrictValidator = jsonschema.validators.extend(Draft202012Validator, type_checker=_STRICT_TYPES)


@functools.cache
def validator(definition: str) -> Any:
    """A strict validator (integers, ``uuid`` format) of one ``$defs`` entry of the schema."""
    return StrictValidator(
        schema_for(definition), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def validate_server_frame(frame: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``frame`` (parsed) is a valid server frame."""
    validator("serverFrame").validate(frame)


def validate_client_frame(frame: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``frame`` (parsed) is a valid client frame."""
    validator("clientFrame").validate(frame)


def is_valid(definition: str, value: Any) -> bool:
    return bool(validator(definition).is_valid(value))


# The schema document ------------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def test_every_ref_resolves() -> None:
    schema = load_schema()
    refs = _refs(schema)
    assert refs and all(ref.startswith("#/$defs/") for ref in refs)
    assert {ref.removeprefix("#/$defs/") for ref in refs} <= set(schema["$defs"])


def test_schema_for_unknown_definition() -> None:
    with pytest.raises(KeyError):
        schema_for("nope")


def test_frame_type_tags_match_the_codec() -> None:
    defs = load_schema()["$defs"]
    assert defs["clientFrame"]["properties"]["type"]["enum"] == list(CLIENT_FRAME_TYPES)
    assert defs["serverFrame"]["properties"]["type"]["enum"] == list(SERVER_FRAME_TYPES)
    for tag in [*CLIENT_FRAME_TYPES, *SERVER_FRAME_TYPES]:
        assert defs[tag]["properties"]["type"] == {"const": tag}


MODELS: dict[str, type[Any]] = {
    "hello": Hello,
    "resumeRequest": ResumeRequest,
    "event": Event,
    "ack": Ack,
    "errorInfo": ErrorInfo,
    "ping": Ping,
    "welcome": Welcome,
    "heartbeatInfo": HeartbeatInfo,
    "limitsInfo": LimitsInfo,
    "roomRef": RoomRef,
    "push": Push,
    "request": Request,
    "pong": Pong,
    "error": Error,
    "reconnect": Reconnect,
    "streamPosition": StreamPosition,
    "roomPosition": RoomPosition,
    "chatMessage": ChatMessage,
    "textPayload": TextPayload,
    "imagePayload": ImagePayload,
    "filePayload": FilePayload,
    "commandPayload": CommandPayload,
    "roomArgs": RoomArgs,
    "historyArgs": HistoryArgs,
    "sendTarget": SendTarget,
    "sendArgs": SendArgs,
    "typingArgs": TypingArgs,
    "statusArgs": StatusArgs,
}


@pytest.mark.parametrize("definition, cls", MODELS.items(), ids=MODELS.keys())
def test_definition_fields_match_the_model(definition: str, cls: type[Any]) -> None:
    """Same wire names, and required exactly where the model has no default."""
    schema = load_schema()["$defs"][definition]
    tagged = definition in CLIENT_FRAME_TYPES or definition in SERVER_FRAME_TYPES
    fields = attrs.fields(cls)
    names = {wire_name(f.name, cls) for f in fields} | ({"type"} if tagged else set())
    required = {wire_name(f.name, cls) for f in fields if f.default is attrs.NOTHING}
    assert set(schema["properties"]) == names
    assert set(schema.get("required", [])) == required | ({"type"} if tagged else set())


def test_error_codes_match() -> None:
    codes = load_schema()["$defs"]["errorCode"]["examples"]
    assert set(codes) == {v for k, v in vars(ErrorCode).items() if k.isupper()}


# What the codec produces validates ----------------------------------------------------------------


@ENCODINGS
@pytest.mark.parametrize("frame", CLIENT_FRAMES.values(), ids=CLIENT_FRAMES.keys())
def test_client_frames_validate(frame: Any, binary: bool) -> None:
    validate_client_frame(wire(frame, binary))


@ENCODINGS
@pytest.mark.parametrize("frame", SERVER_FRAMES.values(), ids=SERVER_FRAMES.keys())
def test_server_frames_validate(frame: Any, binary: bool) -> None:
    validate_server_frame(wire(frame, binary))


def test_ack_is_both_a_client_and_a_server_frame() -> None:
    for frame in (Ack(1), Ack(2, [1]), Ack(3, error=ErrorInfo("x", "y"))):
        validate_client_frame(wire(frame))
        validate_server_frame(wire(frame))
    assert not is_valid("serverFrame", wire(Hello(1)))
    assert not is_valid("clientFrame", wire(Pong(1.0, 2.0)))


def _message(**fields: Any) -> dict[str, Any]:
    message = ChatMessage("text", TextPayload("hi"), UUID, 1732240000123, "alice")
    data: dict[str, Any] = unstructure(attrs.evolve(message, **fields))
    return data


BUILTIN_EVENTS = {
    "room.join": {"ns": "/", "room": "lobby"},
    "room.join-default-ns": {"room": "lobby"},
    "room.leave": {"room": "lobby"},
    "room.members": {"room": "lobby", "ns": "/game"},
    "send-room": {"to": {"room": "lobby"}, "data": VALID_MESSAGES["text"]},
    "send-user": {"to": {"user": "bob"}, "data": _message(), "exceptSelf": True},
    "send-users": {"to": {"users": ["bob", "carol"]}, "event": "poke", "data": [1, 2]},
    "send-all": {"to": {"all": True}, "event": "announce", "volatile": True},
    "send-image": {"to": {"room": "r", "ns": "/g"}, "data": VALID_MESSAGES["image"]},
    "send-file": {"to": {"room": "r"}, "data": VALID_MESSAGES["file-empty"]},
    "send-command": {"to": {"room": "r"}, "data": VALID_MESSAGES["command"]},
    "typing": {"ns": "/", "room": "lobby", "typing": False},
    "status": {"status": "away", "text": "lunch"},
    "users.online": {},
}


@ENCODINGS
@pytest.mark.parametrize("case", BUILTIN_EVENTS.items(), ids=BUILTIN_EVENTS.keys())
def test_builtin_events_validate(case: tuple[str, Any], binary: bool) -> None:
    name, data = case
    frame = wire(Event(name.split("-")[0], data, id=1, cmid="c-1"), binary)
    validate_client_frame(frame)
    if name.startswith("send"):  # what the node itself accepts, too
        args = structure(frame["data"], SendArgs)
        assert args.to.mode
        if args.event == "message":
            validate_chat_message(structure(args.data, ChatMessage), PayloadLimits())


def test_users_online_data_may_be_left_out() -> None:
    validate_client_frame(wire(Event("users.online", id=1)))


RESULTS = {
    "roomJoinResult": {
        "ns": "/",
        "room": "lobby",
        "members": ["alice", "bob"],
        "epoch": "a1b2c3d4",
        "offset": 12,
    },
    "roomLeaveResult": {"ns": "/", "room": "lobby"},
    "roomMembersResult": {
        "ns": "/",
        "room": "lobby",
        "members": [
            {"user": "alice", "status": "online", "connections": 2},
            {"user": "bob", "status": "away", "connections": 1},
        ],
    },
    "sendResult": {"messageId": UUID},
    "emptyResult": {},
    "usersOnlineResult": {"users": ["alice", "bob"]},
}


@ENCODINGS
@pytest.mark.parametrize("definition, result", RESULTS.items(), ids=RESULTS.keys())
def test_builtin_results_validate(definition: str, result: Any, binary: bool) -> None:
    frame = wire(Ack(1, result), binary)
    validate_server_frame(frame)
    assert is_valid(definition, frame["result"])


def test_invalid_results_are_refused() -> None:
    join = {"ns": "/", "room": "r", "members": ["a", "a"], "epoch": "e", "offset": 0}
    assert not is_valid("roomJoinResult", join)
    assert not is_valid("roomMembersResult", {"ns": "/", "room": "r", "members": [{"user": "a"}]})
    assert not is_valid("usersOnlineResult", {"users": "alice"})
    assert not is_valid("emptyResult", {"x": 1})


PUSHES = {
    "message-room": (
        Push("message", _message(), room=RoomRef("/", "lobby"), sender="alice"),
        False,
    ),
    "message-users": (Push("message", _message(), sender="alice", to=["bob"]), False),
    "image": (
        Push("message", _message(type="image", payload=ImagePayload("https://x.io/a", 8, 6))),
        False,
    ),
    "joined": (Push("room.joined", {"ns": "/", "room": "lobby", "user": "bob"}), False),
    "left": (Push("room.left", {"ns": "/", "room": "lobby", "user": "bob"}), False),
    "typing": (Push("typing", {"ns": "/", "room": "lobby", "user": "a", "typing": True}), True),
    "status": (Push("status", {"user": "alice", "status": "away", "text": None}), False),
    "status-text": (Push("status", {"user": "alice", "status": "brb", "text": "5 min"}), False),
    "app": (Push("score", {"home": 2, "away": [1.5, None]}, sender="bot"), False),
    "app-volatile": (Push("cursor", {"x": 1, "y": 2}, room=RoomRef("/", "doc")), True),
    "app-no-data": (Push("tick"), False),
}


@ENCODINGS
@pytest.mark.parametrize("case", PUSHES.values(), ids=PUSHES.keys())
def test_rendered_pushes_validate(case: tuple[Push, bool], binary: bool) -> None:
    push, volatile = case
    template = PushTemplate.of(push, volatile=volatile)
    for seq in [None] if volatile else [1, 2**40]:
        frame = load(template.render(seq, binary), binary)
        validate_server_frame(frame)
        assert ("seq" in frame) is not volatile


# What the schema refuses --------------------------------------------------------------------------


INVALID_CLIENT = {
    "no-type": {"v": 1},
    "unknown-type": {"type": "subscribe"},
    "server-type": {"type": "welcome"},
    "hello-no-v": {"type": "hello"},
    "hello-string-v": {"type": "hello", "v": "1"},
    "hello-float-v": {"type": "hello", "v": 1.0},
    "hello-bool-v": {"type": "hello", "v": True},
    "hello-resume": {"type": "hello", "v": 1, "resume": {"session": "s"}},
    "event-no-name": {"type": "event", "data": {}},
    "event-id": {"type": "event", "event": "x", "id": "1"},
    "ack-no-id": {"type": "ack", "result": 1},
    "ack-error": {"type": "ack", "id": 1, "error": {"code": "x"}},
    "ping-bool": {"type": "ping", "ts": True},
    "join-no-room": {"type": "event", "event": "room.join", "data": {"ns": "/"}},
    "join-no-data": {"type": "event", "event": "room.join"},
    "join-empty-room": {"type": "event", "event": "room.join", "data": {"room": ""}},
    "join-control": {"type": "event", "event": "room.join", "data": {"room": "a\n"}},
    "send-two": {"type": "event", "event": "send", "data": {"to": {"room": "r", "user": "b"}}},
    "send-none": {"type": "event", "event": "send", "data": {"to": {"all": False}}},
    "send-no-message": {"type": "event", "event": "send", "data": {"to": {"room": "r"}}},
    "send-bad-message": {
        "type": "event",
        "event": "send",
        "data": {"to": {"room": "r"}, "data": {"type": "image", "payload": {"url": "x"}}},
    },
    "send-users-string": {
        "type": "event",
        "event": "send",
        "data": {"to": {"users": "bob"}, "event": "x"},
    },
    "typing-bool": {"type": "event", "event": "typing", "data": {"room": "r", "typing": "yes"}},
    "status-none": {"type": "event", "event": "status", "data": {"text": "x"}},
}


@pytest.mark.parametrize("frame", INVALID_CLIENT.values(), ids=INVALID_CLIENT.keys())
def test_invalid_client_frames_are_refused(frame: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_client_frame(frame)


def _welcome() -> dict[str, Any]:
    return wire(SERVER_FRAMES["welcome"])


INVALID_SERVER = {
    "client-type": {"type": "hello", "v": 1},
    "welcome-no-seq": {k: v for k, v in _welcome().items() if k != "seq"},
    "welcome-snake": {**_welcome(), "resume_token": "t", "resumeToken": None},
    "welcome-limits": {**_welcome(), "limits": {"maxFrameBytes": 1}},
    "push-to-string": {"type": "push", "event": "x", "to": "bob"},
    "push-room": {"type": "push", "event": "x", "room": {"room": "r"}},
    "push-seq": {"type": "push", "event": "x", "seq": "1"},
    "message-no-id": {"type": "push", "event": "message", "data": _message(message_id=None)},
    "message-no-data": {"type": "push", "event": "message"},
    "message-bad-uuid": {"type": "push", "event": "message", "data": _message(message_id="123")},
    "typing-with-seq": {
        "type": "push",
        "event": "typing",
        "seq": 3,
        "data": {"ns": "/", "room": "r", "user": "a", "typing": True},
    },
    "joined-no-user": {"type": "push", "event": "room.joined", "data": {"ns": "/", "room": "r"}},
    "status-no-status": {"type": "push", "event": "status", "data": {"user": "a"}},
    "request-no-event": {"type": "request", "id": 1},
    "pong-no-server-ts": {"type": "pong", "ts": 1.0},
    "error-no-message": {"type": "error", "code": "invalid"},
    "error-ref": {"type": "error", "code": "invalid", "message": "m", "ref": "4"},
}


@pytest.mark.parametrize("frame", INVALID_SERVER.values(), ids=INVALID_SERVER.keys())
def test_invalid_server_frames_are_refused(frame: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_server_frame(frame)


# Schema and codec accept the same frames ----------------------------------------------------------


BUILTIN_EVENT_NAMES = {"room.join", "room.leave", "room.members", "send", "typing", "status"}
BUILTIN_PUSH_NAMES = {"message", "room.joined", "room.left", "typing", "status"}


def _typed_data(frame: dict[str, Any]) -> bool:
    """Whether the schema types this frame's data (the codec leaves data to the node)."""
    names = BUILTIN_EVENT_NAMES if frame.get("type") == "event" else BUILTIN_PUSH_NAMES
    event = frame.get("event")
    return frame.get("type") in ("event", "push") and type(event) is str and event in names


def _accepts(decode: Any, frame: dict[str, Any]) -> bool:
    try:
        decode(orjson.dumps(frame), False)
    except RemoteProtocolError:
        return False
    return True


@FAST
@given(frame=frame_objects)
def test_schema_and_codec_agree_on_frames(frame: dict[str, Any]) -> None:
    for side, decode in (
        ("clientFrame", decode_client_frame),
        ("serverFrame", decode_server_frame),
    ):
        valid, accepted = is_valid(side, frame), _accepts(decode, frame)
        if _typed_data(frame):
            assert accepted or not valid  # the schema also checks the data
        else:
            assert valid == accepted, (side, frame)


# No configurable bound gets in the way here: only the fixed rules of the chat model are compared.
OPEN_LIMITS = PayloadLimits(
    max_text_chars=2**31,
    max_name_chars=2**31,
    max_url_chars=2**31,
    max_image_side=2**64,
    max_file_bytes=2**64,
)
message_cases = st.sampled_from(list(VALID_MESSAGES.values())).flatmap(_mutations)


@FAST
@given(data=message_cases)
def test_schema_and_validator_agree_on_chat_messages(data: Any) -> None:
    try:
        validate_chat_message(structure(data, ChatMessage), OPEN_LIMITS)
        accepted = True
    except RemoteProtocolError:
        accepted = False
    assert is_valid("chatMessage", data) == accepted, data

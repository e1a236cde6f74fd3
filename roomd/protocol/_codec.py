"""The one converter of the protocol: frames to and from JSON text or msgpack binary.

Policy, in one place:

* field names are camelCase on the wire (``Push.sender`` is ``from``);
* fields at their default value are left out when encoding, and filled in when decoding;
* unknown fields are ignored (forward compatible); unknown frame types are an error;
* types are checked strictly: ``"1"`` is not an int, ``1`` is not a string, ``true`` is not an int.

Any input error becomes a :class:`RemoteProtocolError` whose message names the path of the bad
field (``payload.width: expected an integer``). Nothing else escapes the decoder.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Final, TypeVar

import attrs
import cattrs
import msgpack
import orjson
from cattrs.errors import AttributeValidationNote
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._chat import PAYLOAD_TYPES, ChatMessage
from ._errors import ErrorCode, RemoteProtocolError
from ._frames import (
    CLIENT_FRAME_TYPES,
    FRAME_TAGS,
    SERVER_FRAME_TYPES,
    ClientFrame,
    Push,
    Request,
    ServerFrame,
)

T = TypeVar("T")

_WIRE_NAMES: Final[dict[tuple[type[Any], str], str]] = {
    (Push, "sender"): "from",
    (Request, "sender"): "from",
}


def wire_name(field: str, cls: type[Any] | None = None) -> str:
    """The wire name of a field of ``cls``: ``resume_token`` -> ``resumeToken``.

    One field is renamed outright: ``Push.sender`` is ``from``.
    """
    special = _WIRE_NAMES.get((cls, field)) if cls is not None else None
    if special is not None:
        return special
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


def _expect(kind: type[Any], label: str) -> typing.Callable[[Any, Any], Any]:
    def check(value: Any, _: Any) -> Any:
        if type(value) is not kind:
            raise TypeError(f"expected {label}")
        return value

    return check


def _structure_float(value: Any, _: Any) -> float:
    """A number, kept as it came (an integer stays an integer: a ping's ``ts`` is echoed as
    it was sent)."""
    if type(value) not in (int, float):
        raise TypeError("expected a number")
    return value  # type: ignore[no-any-return]


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def _is_dict(tp: Any) -> bool:
    return typing.get_origin(tp) is dict


def make_converter(*, detailed: bool = True) -> cattrs.Converter:
    """Build a protocol converter.

    Two are built (:data:`converter` and :data:`_quick`), from the same hooks: cattrs generates
    each attrs class's structuring function, with per-field error bookkeeping (``detailed``,
    which words errors with their paths) or without (a valid frame, the hot path, is structured
    in about half the time). :func:`structure` tries the quick one and, only when it fails, lets
    the detailed one word the error.
    """
    conv = cattrs.Converter(detailed_validation=detailed)
    conv.register_structure_hook(str, _expect(str, "a string"))
    conv.register_structure_hook(int, _expect(int, "an integer"))
    conv.register_structure_hook(bool, _expect(bool, "a boolean"))
    conv.register_structure_hook(float, _structure_float)

    def list_hook(tp: Any) -> typing.Callable[[Any, Any], list[Any]]:
        (item,) = typing.get_args(tp) or (Any,)

        def structure_list(value: Any, _: Any) -> list[Any]:
            if type(value) is not list:
                raise TypeError("expected a list")
            return [conv.structure(v, item) for v in value]

        return structure_list

    def dict_hook(tp: Any) -> typing.Callable[[Any, Any], dict[str, Any]]:
        def structure_dict(value: Any, _: Any) -> dict[str, Any]:
            if type(value) is not dict:
                raise TypeError("expected an object")
            return value

        return structure_dict

    def renames(cls: type[Any]) -> dict[str, Any]:
        return {
            f.name: override(rename=wire_name(f.name, cls))
            for f in attrs.fields(cls)
            if wire_name(f.name, cls) != f.name
        }

    def attrs_hook(cls: type[Any]) -> typing.Callable[[Any, Any], Any]:
        structure_fields = make_dict_structure_fn(
            cls, conv, _cattrs_detailed_validation=detailed, **renames(cls)
        )

        @functools.wraps(structure_fields)  # keeps .overrides, which union disambiguation reads
        def structure_object(value: Any, tp: Any) -> Any:
            if type(value) is not dict:
                raise TypeError("expected an object")
            return structure_fields(value, tp)

        return structure_object

    def chat_hook(cls: type[ChatMessage]) -> typing.Callable[[Any, Any], ChatMessage]:
        # The payload's class is the one ``type`` names, not one guessed from the payload's keys
        # (cattrs would pick by key, so an extra ``size`` could turn a text payload into a file).
        structure_fields = make_dict_structure_fn(
            cls,
            conv,
            _cattrs_detailed_validation=detailed,
            **renames(cls),
            payload=override(struct_hook=dict_hook(dict[str, Any])),
        )

        def structure_chat(value: Any, tp: Any) -> ChatMessage:
            if type(value) is not dict:
                raise TypeError("expected an object")
            message: ChatMessage = structure_fields(value, tp)
            payload_cls = PAYLOAD_TYPES[message.type]
            try:
                payload = conv.structure(message.payload, payload_cls)
            except Exception as exc:
                if not detailed:
                    raise
                exc.add_note(AttributeValidationNote("payload", "payload", payload_cls))
                raise cattrs.ClassValidationError(
                    f"structuring {cls.__name__}", [exc], cls
                ) from None
            return ChatMessage(  # (not attrs.evolve: it inspects the class on every call)
                message.type,
                payload,
                message.message_id,
                message.timestamp,
                message.sender,
                message.metadata,
            )

        return structure_chat

    conv.register_structure_hook_factory(_is_list, list_hook)
    conv.register_structure_hook_factory(_is_dict, dict_hook)
    conv.register_structure_hook_factory(attrs.has, attrs_hook)
    conv.register_structure_hook_factory(lambda tp: tp is ChatMessage, chat_hook)

    def unstructure_overrides(cls: type[Any]) -> dict[str, Any]:
        # Fields typed ``Any`` (event data, results) hold plain data already: they pass through
        # as they are, instead of being walked value by value. Encoding (:func:`dump`) turns an
        # attrs instance found inside them into plain data (:func:`_plain`).
        overrides = renames(cls)
        for f in attrs.fields(cls):
            if f.type is Any or f.type == "Any":
                overrides[f.name] = override(rename=wire_name(f.name, cls), unstruct_hook=_as_is)
        return overrides

    conv.register_unstructure_hook_factory(
        attrs.has,
        lambda cls: make_dict_unstructure_fn(
            cls, conv, _cattrs_omit_if_default=True, **unstructure_overrides(cls)
        ),
    )
    return conv


def _as_is(value: Any) -> Any:
    return value


converter: Final = make_converter()
_quick: Final = make_converter(detailed=False)
# What structuring invalid data raises (the detailed converter says it in words).
_STRUCTURE_ERRORS: Final = (
    cattrs.BaseValidationError,
    cattrs.errors.CattrsError,
    ValueError,
    TypeError,
    KeyError,
)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    return getattr(tp, "__name__", repr(tp))


def _describe(exc: BaseException, tp: Any) -> str:
    """One structuring error in words: our hooks' own messages, a literal's choices."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if typing.get_origin(tp) is typing.Literal:
        return "expected one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if isinstance(exc, TypeError) and str(exc).startswith("expected "):
        return str(exc)
    if tp is not None:
        return f"expected {_type_name(tp)}"
    return str(exc) or "invalid value"


def _readable(exc: Exception) -> str:
    """``path: problem`` for each error, the path in wire names (``payload.mimeType``)."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)
    problems = []
    for line in cattrs.transform_error(exc, path="", format_exception=_describe):
        text, _, path = line.rpartition(" @ ")
        parts = path.lstrip(".").split(".")
        path = ".".join(wire_name(p) if p.isidentifier() else p for p in parts)
        problems.append(f"{path}: {text}" if path else text)
    return "; ".join(problems)


def structure(value: Any, cls: type[T], *, ref: int | None = None) -> T:
    """Structure ``value`` as ``cls`` or raise :class:`RemoteProtocolError` (``invalid``)."""
    if attrs.has(cls) and type(value) is not dict:
        raise RemoteProtocolError(ErrorCode.INVALID, "expected an object", ref=ref)
    try:
        return _quick.structure(value, cls)
    except RemoteProtocolError:
        raise
    except _STRUCTURE_ERRORS:
        pass  # invalid: structure again, with the error bookkeeping, to say why
    try:
        return converter.structure(value, cls)
    except RemoteProtocolError:
        raise
    except _STRUCTURE_ERRORS as exc:
        raise RemoteProtocolError(ErrorCode.INVALID, _readable(exc), ref=ref) from None


def unstructure(value: Any) -> Any:
    """Plain data (dicts, lists, strings, numbers) for an attrs instance."""
    return converter.unstructure(value)


# Frames -------------------------------------------------------------------------------------------


DEFAULT_MAX_DEPTH: Final = 32  # objects and arrays nested in one frame, the frame included

# Every msgpack map or array starts with one of these bytes (fixmap, fixarray, array 16/32,
# map 16/32); other bytes may too, so their count is an upper bound of a frame's containers.
_MSGPACK_CONTAINER_BYTES: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_MSGPACK_CONTAINER: Final = bytes(b for b in range(256) if b not in _MSGPACK_CONTAINER_BYTES)


def _containers_at_most(raw: bytes | str, binary: bool) -> int:
    """An upper bound of the objects and arrays in a message, counted at C speed."""
    if isinstance(raw, str):
        return raw.count("{") + raw.count("[")
    if binary:
        return len(raw.translate(None, _NOT_MSGPACK_CONTAINER))
    return raw.count(b"{") + raw.count(b"[")


def nesting_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and arrays in ``value`` nest deeper than ``limit`` (iterative: any
    depth is measured without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        children = container.values() if type(container) is dict else container
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def load(raw: bytes | str, binary: bool, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """Parse one WebSocket message into a frame object (a dict), or raise ``bad_frame``.

    Objects and arrays may nest at most ``max_depth`` levels (the frame itself is the first):
    deeper data is refused here, before any code walks it recursively. Most frames hold fewer
    containers than the limit, which a byte count shows without walking them.
    """
    try:
        if binary:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        else:
            obj = orjson.loads(raw)
    except Exception:
        what = "msgpack" if binary else "JSON"
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"not valid {what}") from None
    if type(obj) is not dict:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "a frame must be an object")
    if _containers_at_most(raw, binary) > max_depth and nesting_depth_exceeds(obj, max_depth):
        ref = obj.get("id")
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME,
            f"objects and arrays nested deeper than {max_depth} levels",
            ref=ref if type(ref) is int else None,
        )
    return obj


def _plain(value: Any) -> Any:
    """For the encoders: an attrs instance inside data becomes plain data; nothing else does."""
    if attrs.has(type(value)):
        return converter.unstructure(value)
    raise TypeError(f"{type(value).__name__} has no JSON or msgpack form")


def dump(obj: Any, binary: bool) -> bytes:
    """Serialize plain data as JSON or msgpack; ``TypeError`` if it has no such form."""
    if binary:
        return msgpack.packb(obj, use_bin_type=True, default=_plain)  # type: ignore[no-any-return]
    return orjson.dumps(obj, default=_plain)


def _decode(
    raw: bytes | str,
    binary: bool,
    table: typing.Mapping[str, type[T]],
    side: str,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> T:
    obj = load(raw, binary, max_depth)
    ref = obj.get("id")
    ref = ref if type(ref) is int else None
    tag = obj.get("type")
    cls = table.get(tag) if type(tag) is str else None
    if cls is None:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown {side} frame type {tag!r}; expected one of {', '.join(table)}",
            ref=ref,
        )
    return structure(obj, cls, ref=ref)


def decode_client_frame(
    raw: bytes | str, binary: bool, max_depth: int = DEFAULT_MAX_DEPTH
) -> ClientFrame:
    """Decode a frame sent by a client. Raises only :class:`RemoteProtocolError`."""
    return _decode(raw, binary, CLIENT_FRAME_TYPES, "client", max_depth)


def decode_server_frame(raw: bytes | str, binary: bool) -> ServerFrame:
    """Decode a frame sent by a node. Raises only :class:`RemoteProtocolError`."""
    return _decode(raw, binary, SERVER_FRAME_TYPES, "server")


def encode_frame(frame: ClientFrame | ServerFrame, binary: bool) -> bytes:
    """Encode a frame as JSON (``binary=False``) or msgpack."""
    body = {"type": FRAME_TAGS[type(frame)]}
    body.update(converter.unstructure(frame))
    return dump(body, binary)


# Pushes: encoded once, numbered per recipient ---------------------------------------------------

_JSON_HEAD: Final = b'{"type":"push",'
_MSGPACK_TYPE_PUSH: Final[bytes] = msgpack.packb("type") + msgpack.packb("push")
_MSGPACK_SEQ_KEY: Final[bytes] = msgpack.packb("seq")


class PushTemplate:
    """A push encoded once and stamped with each recipient's sequence number.

    The body (event, data, room, sender, to) is serialized to JSON once; :meth:`render` splices
    the ``type`` and ``seq`` fields in front of it, which costs a few hundred nanoseconds instead
    of a full encode per recipient. The msgpack form is derived from the JSON body the first time
    a binary connection needs it. The JSON body is also what travels between nodes, so a push is
    encoded once, at the node where it was sent.
    """

    __slots__ = ("_msgpack", "_shared", "body", "offset", "stream", "volatile")

    def __init__(
        self,
        body: bytes,
        *,
        volatile: bool = False,
        stream: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.body = body  # the JSON object without its opening brace
        self.volatile = volatile
        self.stream = stream  # for a push of a stream: which, and its offset there
        self.offset = offset
        self._msgpack: tuple[int, bytes] | None = None
        self._shared: dict[Any, bytes | None] | None = None  # see shared()

    @classmethod
    def of(cls, push: Push, *, volatile: bool = False) -> PushTemplate:
        """Encode ``push``. Error handling: ``TypeError`` if its data has no JSON form."""
        if push.seq is not None:
            raise ValueError("a push template carries no seq")
        return cls(orjson.dumps(converter.unstructure(push), default=_plain)[1:], volatile=volatile)

    def head(self, seq: int | None, binary: bool) -> bytes:
        """What :meth:`render` puts in front of the part every recipient shares (the ``type``,
        and the ``seq`` when there is one)."""
        if not binary:
            return _JSON_HEAD if seq is None else b'{"type":"push","seq":%d,' % seq
        count = self._packed()[0]
        if seq is None:
            return bytes((0x80 | (count + 1),)) + _MSGPACK_TYPE_PUSH
        seq_bytes: bytes = msgpack.packb(seq)
        return bytes((0x80 | (count + 2),)) + _MSGPACK_TYPE_PUSH + _MSGPACK_SEQ_KEY + seq_bytes

    def tail(self, binary: bool) -> bytes:
        """The part of the frame every recipient shares: ``render`` is ``head + tail``."""
        return self._packed()[1] if binary else self.body

    def shared(
        self, binary: bool, key: typing.Hashable, make: typing.Callable[[bytes], bytes | None]
    ) -> bytes | None:
        """``make(the shared part)`` in encoding ``binary``, computed once per ``key`` and kept
        with the template: a form of what every recipient shares, such as its compressed form,
        costs one computation per message, not one per recipient."""
        cache_key = (binary, key)
        try:
            return self._shared[cache_key]  # type: ignore[index]
        except (TypeError, KeyError):  # (no cache yet, or not this form yet)
            if self._shared is None:
                self._shared = {}
            value = self._shared[cache_key] = make(self.tail(binary))
            return value

    def _packed(self) -> tuple[int, bytes]:
        if self._msgpack is None:
            packed: bytes = msgpack.packb(orjson.loads(b"{" + self.body))
            self._msgpack = (packed[0] & 0x0F, packed[1:])  # fixmap: a push has <= 15 keys
        return self._msgpack

    def render(self, seq: int | None, binary: bool) -> bytes:
        """The encoded push frame, with ``seq`` (``None`` for a volatile push)."""
        if not binary:
            if seq is None:
                return _JSON_HEAD + self.body
            return b'{"type":"push","seq":%d,%s' % (seq, self.body)
        count, rest = self._packed()
        if seq is None:
            return bytes((0x80 | (count + 1),)) + _MSGPACK_TYPE_PUSH + rest
        seq_bytes: bytes = msgpack.packb(seq)
        return b"".join(
            (bytes((0x80 | (count + 2),)), _MSGPACK_TYPE_PUSH, _MSGPACK_SEQ_KEY, seq_bytes, rest)
        )

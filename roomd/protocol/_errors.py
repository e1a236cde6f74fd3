"""Errors of the roomd protocol.

Errors say who is at fault (as in h11 and wsproto):

* :class:`RemoteProtocolError`: the peer sent something we cannot accept. It carries the error
  ``code`` to report back, the id of the offending frame when known (``ref``), and a close code when
  the connection cannot go on (``close_code``; ``None`` means "report it, keep the connection").
* :class:`LocalProtocolError`: the caller misused the API (a programming error on our side).
* :class:`HandlerError`: raised by an application's event handler; the client receives it as an
  error acknowledgement ``{"code": ..., "message": ...}``.
"""

from __future__ import annotations

from typing import Final


class ErrorCode:
    """The error codes a client may see in ``error`` frames and error acknowledgements."""

    BAD_FRAME: Final = "bad_frame"  # not valid JSON / msgpack, or not an object
    UNKNOWN_TYPE: Final = "unknown_type"  # frame "type" we do not know
    INVALID: Final = "invalid"  # a field is missing, of the wrong type or out of bounds
    UNSUPPORTED_VERSION: Final = "unsupported_version"
    HANDSHAKE_REQUIRED: Final = "handshake_required"  # a frame before "hello"
    UNKNOWN_EVENT: Final = "unknown_event"
    FORBIDDEN: Final = "forbidden"  # this node does not allow the operation to clients
    RATE_LIMITED: Final = "rate_limited"
    BUSY: Final = "busy"  # too many events of this connection are still being handled
    NOT_IN_ROOM: Final = "not_in_room"
    ROOM_FULL: Final = "room_full"
    TOO_MANY_ROOMS: Final = "too_many_rooms"
    NOT_FOUND: Final = "not_found"
    TIMEOUT: Final = "timeout"
    HISTORY_GAP: Final = "history_gap"  # the messages asked for are no longer held
    INTERNAL: Final = "internal"


class RoomdError(Exception):
    """Base class of every roomd error that carries a wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class RemoteProtocolError(RoomdError):
    """The peer broke the protocol.

    ``close_code`` is ``None`` when the error is reported and the connection goes on; otherwise the
    connection must be closed with that code.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        ref: int | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(code, message)
        self.ref = ref
        self.close_code = close_code


class LocalProtocolError(RoomdError):
    """The local caller misused the protocol API."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


class HandlerError(RoomdError):
    """Raise from an event handler to answer the client with an error acknowledgement."""


class AckError(RoomdError):
    """The peer answered a request with an error acknowledgement."""


class RequestTimeout(RoomdError):
    """No acknowledgement arrived in time (or the peer went away first)."""

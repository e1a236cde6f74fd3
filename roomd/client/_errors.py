"""Errors the client raises, on top of :class:`~roomd.protocol.AckError` (the node answered a
call with an error) and :class:`~roomd.protocol.RequestTimeout` (no answer in time)."""

from __future__ import annotations

from typing import Final

from ..protocol import RequestTimeout, RoomdError


class ClientErrorCode:
    """Codes of client-side errors (they never travel on the wire)."""

    CONNECTION_LOST: Final = "connection_lost"
    OFFLINE_QUEUE_FULL: Final = "offline_queue_full"
    CLOSED: Final = "closed"
    CONNECT_FAILED: Final = "connect_failed"
    INVALID_SERVER: Final = "invalid_server"


class ClientError(RoomdError):
    """Base class of the errors raised by the client itself."""


class ConnectionLost(RequestTimeout):
    """The call was sent but the connection dropped before its acknowledgement.

    Whether the node handled it is unknown: the client does not send it again on its own.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ClientErrorCode.CONNECTION_LOST, message)


class OfflineQueueFull(ClientError):
    """The client is disconnected and its offline queue is full: the emit was not queued."""

    def __init__(self, size: int) -> None:
        super().__init__(
            ClientErrorCode.OFFLINE_QUEUE_FULL,
            f"disconnected and the offline queue is full ({size} frames)",
        )
        self.size = size


class ClientClosed(ClientError):
    """The client is closed (by the application, a terminal close code, or after giving up).

    ``close_code`` and ``reason`` say why, when the connection closed that way.
    """

    def __init__(self, message: str, close_code: int | None = None, reason: str = "") -> None:
        super().__init__(ClientErrorCode.CLOSED, message)
        self.close_code = close_code
        self.reason = reason


class ConnectFailed(ClientError):
    """The first connection could not be made (terminal close code, or attempts exhausted)."""

    def __init__(self, message: str, close_code: int | None = None, reason: str = "") -> None:
        super().__init__(ClientErrorCode.CONNECT_FAILED, message)
        self.close_code = close_code
        self.reason = reason


class InvalidServer(ClientError):
    """The URL does not lead to a roomd node this client can speak to."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(ClientErrorCode.INVALID_SERVER, f"{url}: {problem}")
        self.url = url
        self.problem = problem

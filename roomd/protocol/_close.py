"""The one table of WebSocket close codes roomd uses.

Every code is either *reconnect* (the client should reconnect, with backoff) or *terminal* (the
client must not reconnect on its own: something about the client or its credentials must change
first). Clients look a code up with :func:`should_reconnect`.
"""

from __future__ import annotations

import enum

import attrs


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    ABNORMAL = 1006  # never sent: what a client sees when the TCP connection dropped
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    HANDSHAKE_TIMEOUT = 4000
    CLOSED_BY_CLIENT = 4001
    UNSUPPORTED_VERSION = 4002
    BAD_HANDSHAKE = 4003
    HEARTBEAT_TIMEOUT = 4004
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4009
    KICKED = 4010
    AUTH_FAILED = 4011
    REPLACED = 4012


@attrs.frozen
class CloseInfo:
    code: CloseCode
    reconnect: bool
    reason: str  # the close reason roomd sends (at most 123 bytes of UTF-8)
    meaning: str  # what it means, for docs and logs


def _table(*rows: tuple[CloseCode, bool, str, str]) -> dict[int, CloseInfo]:
    return {int(code): CloseInfo(code, rec, reason, meaning) for code, rec, reason, meaning in rows}


RECONNECT, TERMINAL = True, False

CLOSE_CODES: dict[int, CloseInfo] = _table(
    (CloseCode.NORMAL, TERMINAL, "normal closure", "The session ended normally."),
    (CloseCode.GOING_AWAY, RECONNECT, "going away", "The node is shutting down or draining."),
    (CloseCode.PROTOCOL_ERROR, TERMINAL, "protocol error", "Invalid WebSocket framing."),
    (CloseCode.ABNORMAL, RECONNECT, "abnormal closure", "The connection dropped (not sent)."),
    (CloseCode.POLICY_VIOLATION, TERMINAL, "policy violation", "The client broke a node policy."),
    (CloseCode.MESSAGE_TOO_BIG, RECONNECT, "message too big", "A frame exceeded the size limit."),
    (CloseCode.INTERNAL_ERROR, RECONNECT, "internal error", "The node hit an unexpected error."),
    (CloseCode.TRY_AGAIN_LATER, RECONNECT, "try again later", "The node is at its limit."),
    (CloseCode.HANDSHAKE_TIMEOUT, RECONNECT, "handshake timeout", "No hello in time."),
    (CloseCode.CLOSED_BY_CLIENT, TERMINAL, "closed by client", "The client closed the session."),
    (
        CloseCode.UNSUPPORTED_VERSION,
        TERMINAL,
        "unsupported protocol version",
        "The client speaks a protocol version this node does not.",
    ),
    (CloseCode.BAD_HANDSHAKE, TERMINAL, "bad handshake", "The first frame was not a hello."),
    (CloseCode.HEARTBEAT_TIMEOUT, RECONNECT, "heartbeat timeout", "No traffic within timeout."),
    (
        CloseCode.SLOW_CONSUMER,
        RECONNECT,
        "slow consumer",
        "The client did not read fast enough and its outbox overflowed.",
    ),
    (CloseCode.RATE_LIMITED, RECONNECT, "rate limited", "The client kept exceeding its rate."),
    (CloseCode.KICKED, TERMINAL, "kicked", "An operator or the application removed the client."),
    (CloseCode.AUTH_FAILED, TERMINAL, "auth failed", "The credentials are invalid or expired."),
    (CloseCode.REPLACED, TERMINAL, "replaced", "A newer connection took over this session."),
)


def close_info(code: int) -> CloseInfo | None:
    """The table row for ``code``, or ``None`` for a code roomd does not define."""
    return CLOSE_CODES.get(code)


def should_reconnect(code: int | None) -> bool:
    """Whether a client should reconnect after the connection closed with ``code``.

    ``None`` (no close frame) and unknown codes reconnect, except the application-defined terminal
    range 4500-4999.
    """
    if code is None:
        return True
    info = CLOSE_CODES.get(code)
    if info is not None:
        return info.reconnect
    return not 4500 <= code <= 4999

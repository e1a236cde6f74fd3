"""Broker statistics: what libzmq's steerable proxy counts, and the control protocol around it.

The proxy answers ``STATISTICS`` with eight native-endian ``uint64`` frames: messages in, bytes
in, messages out, bytes out, for the frontend (XSUB) and then the backend (XPUB). On the broker's
``--control`` endpoint (a REP socket) the broker answers ``STATISTICS`` with one JSON frame
instead, so that any ZeroMQ client (and a later ``/health``) can read it without knowing the layout.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any, Final

import attrs
import zmq

STATISTICS: Final = b"STATISTICS"
_U64: Final = struct.Struct("=Q")


@attrs.frozen
class SocketStats:
    """Counters of one proxy socket, as libzmq keeps them (messages and payload bytes)."""

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0

    def __sub__(self, other: SocketStats) -> SocketStats:
        return SocketStats(
            self.messages_in - other.messages_in,
            self.bytes_in - other.bytes_in,
            self.messages_out - other.messages_out,
            self.bytes_out - other.bytes_out,
        )


@attrs.frozen
class AuthStats:
    """Connections the broker's ZAP handler let in and refused (CurveZMQ; all zero when the
    broker is insecure): publishers at the frontend, subscribers at the backend."""

    publishers_accepted: int = 0
    publishers_refused: int = 0
    subscribers_accepted: int = 0
    subscribers_refused: int = 0

    def __sub__(self, other: AuthStats) -> AuthStats:
        return AuthStats(
            self.publishers_accepted - other.publishers_accepted,
            self.publishers_refused - other.publishers_refused,
            self.subscribers_accepted - other.subscribers_accepted,
            self.subscribers_refused - other.subscribers_refused,
        )


@attrs.frozen
class BrokerStats:
    """Totals since the broker started.

    ``frontend`` is the XSUB side: *in* counts messages published by nodes, *out* counts the
    subscription messages forwarded up to publishers. ``backend`` is the XPUB side: *in* counts
    subscription messages from subscribers, *out* counts published messages handed to the XPUB
    (once per message, however many subscribers it is then copied to; messages the XPUB then drops
    at a subscriber's high-water mark are still counted).
    """

    frontend: SocketStats = SocketStats()
    backend: SocketStats = SocketStats()
    uptime: float = 0.0  # seconds since Broker.run() started
    auth: AuthStats = AuthStats()
    secure: bool = False  # CurveZMQ on both sockets

    @property
    def published(self) -> int:
        return self.frontend.messages_in

    @property
    def forwarded(self) -> int:
        return self.backend.messages_out

    def __sub__(self, other: BrokerStats) -> BrokerStats:
        return BrokerStats(
            self.frontend - other.frontend,
            self.backend - other.backend,
            self.uptime - other.uptime,
            self.auth - other.auth,
            self.secure,
        )

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BrokerStats:
        raw: Any = json.loads(data)
        if "error" in raw:
            raise ValueError(f"broker replied with an error: {raw['error']}")
        return cls(
            SocketStats(**raw["frontend"]),
            SocketStats(**raw["backend"]),
            float(raw["uptime"]),
            AuthStats(**raw.get("auth", {})),
            bool(raw.get("secure", False)),
        )

    @classmethod
    def from_proxy_reply(cls, frames: Sequence[bytes], uptime: float) -> BrokerStats:
        if len(frames) != 8 or any(len(f) != _U64.size for f in frames):
            raise ValueError(f"unexpected STATISTICS reply from the proxy: {frames!r}")
        n = [_U64.unpack(f)[0] for f in frames]
        return cls(SocketStats(*n[:4]), SocketStats(*n[4:]), uptime)


def broker_stats(
    control: str, timeout: float = 1.0, *, context: zmq.Context[zmq.Socket[bytes]] | None = None
) -> BrokerStats:
    """Ask a running broker for its statistics over its control endpoint (blocking).

    Resource handling:
        Uses a REQ socket of its own, closed before returning; *context* defaults to a private one,
        terminated before returning.

    Error handling:
        Raises :exc:`TimeoutError` if no reply came within *timeout* seconds (no broker, or no
        ``--control`` endpoint), :exc:`ValueError` if the reply is not broker statistics.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = context if context is not None else zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(control)
            sock.send(STATISTICS)
            if not sock.poll(int(timeout * 1000), zmq.POLLIN):
                raise TimeoutError(f"no reply from the broker at {control} within {timeout} s")
            return BrokerStats.from_json(sock.recv())
        finally:
            sock.close(linger=0)
    finally:
        if context is None:
            ctx.term()

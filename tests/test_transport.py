"""The outbox policy of a connection: volatile pushes go first, then the connection (4008)."""

from __future__ import annotations

import socket

from roomd.io import Flusher, Transport
from roomd.node import Stats


async def test_volatile_pushes_are_dropped_first_then_the_connection_closes_4008() -> None:
    ours, theirs = socket.socketpair()  # nothing is written: the flusher never runs
    with ours, theirs:
        stats = Stats()
        outbox = Transport(
            ours, stats, Flusher(), max_message=1024, max_bytes=1000, close_timeout=1
        )
        assert outbox.send_frame(b"r" * 400)
        assert outbox.send_frame(b"v" * 100, volatile=True)  # 500: up to half full, kept
        assert not outbox.send_frame(b"v" * 10, volatile=True)  # over half full: dropped
        assert stats.dropped == 1
        assert outbox.send_frame(b"r" * 450)  # 950 of 1000
        assert outbox.send_frame(b"r" * 100)  # fits only once the queued volatile one is gone
        assert stats.dropped == 2 and not outbox.closing
        assert not outbox.send_frame(b"r" * 100)  # nothing left to evict
        assert outbox.closing and outbox.close_code == 4008
        assert stats.close_codes[4008] == 1
        assert not outbox.send_frame(b"r")  # closing: nothing more is queued

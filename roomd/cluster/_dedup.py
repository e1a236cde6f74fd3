"""Dropping the copies of bus messages that came through several brokers (sans-I/O).

A node given two brokers or more publishes every message to each of them and subscribes
through each: each message it should get arrives once per broker that is up. Every bus message
carries its (origin, epoch, seq): ``seq`` numbers everything a node publishes in one life, so
the pair identifies a message. Each node delivers the first copy and drops the others.

Per (origin, epoch) this keeps the highest ``seq`` seen and a bitmap of the :data:`WINDOW`
numbers below it. A copy further behind than that counts as already seen: the first copy of a
message came through the faster broker long before (a broker lagging :data:`WINDOW` messages of
one origin behind the other would have messages dropped that the other one lost, never
otherwise). Memory: at most :data:`MAX_ORIGINS` lives, about 1 KiB each.
"""

from __future__ import annotations

from typing import Final

from . import _wire

WINDOW: Final = 8192  # sequence numbers remembered below the highest, per origin
MAX_ORIGINS: Final = 4096  # (origin, epoch) pairs remembered; the oldest go first
_MASK: Final = (1 << WINDOW) - 1


class Dedup:
    def __init__(self) -> None:
        self._seen: dict[tuple[bytes, int], list[int]] = {}  # -> [highest seq, bitmap]

    def first(self, message: bytes) -> bool:
        """Whether ``message`` is the first copy of its (origin, epoch, seq) (a message
        without them is always passed on)."""
        stamp = _wire.stamp(message)
        if stamp is None:
            return True
        origin, epoch, seq = stamp
        return self.first_of(origin, epoch, seq)

    def first_of(self, origin: bytes, epoch: int, seq: int) -> bool:
        key = (origin, epoch)
        state = self._seen.get(key)
        if state is None:
            if len(self._seen) >= MAX_ORIGINS:
                del self._seen[next(iter(self._seen))]
            self._seen[key] = [seq, 1]
            return True
        high, bits = state
        if seq > high:
            state[0] = seq
            state[1] = ((bits << (seq - high)) | 1) & _MASK if seq - high < WINDOW else 1
            return True
        behind = high - seq
        if behind >= WINDOW or bits >> behind & 1:
            return False
        state[1] = bits | 1 << behind
        return True

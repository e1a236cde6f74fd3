"""Reconnect policy (sans-I/O): exponential backoff with full jitter, and when to stop.

Nothing here sleeps or draws random numbers on its own: the caller passes the random source, so the
schedule is reproducible in tests.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..protocol import should_reconnect

RandomSource = Callable[[], float]  # uniform in [0, 1), like random.Random().random


@attrs.frozen
class Backoff:
    """Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS, 2015).

    The delay before reconnect attempt ``n`` (1, 2, 3 ...) is uniform in
    ``[0, min(max_delay, base * 2 ** (n - 1)))``. ``attempts`` bounds the number of reconnect
    attempts in a row (``None``: never give up); a successful connection resets the count.
    """

    base: float = 0.5
    max_delay: float = 30.0
    attempts: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.base <= 0 or self.max_delay < self.base:
            raise ValueError("backoff: need 0 < base <= max_delay")
        if self.attempts is not None and self.attempts < 0:
            raise ValueError("backoff: attempts must be >= 0 or None")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        # 2 ** 64 is far past any max_delay; cap the exponent so the float never overflows.
        return min(self.max_delay, self.base * 2.0 ** min(attempt - 1, 64))

    def delay(self, attempt: int, random: RandomSource) -> float:
        """The jittered delay before attempt ``attempt``."""
        return random() * self.ceiling(attempt)

    def exhausted(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` is beyond the limit."""
        return self.attempts is not None and attempt > self.attempts


@attrs.frozen
class Reconnect:
    """Decision: wait ``delay`` seconds, then make attempt ``attempt``."""

    attempt: int
    delay: float


@attrs.frozen
class Stop:
    """Decision: do not reconnect. ``gave_up`` is true when the attempt limit was reached."""

    gave_up: bool
    reason: str


def decide(
    code: int | None, attempt: int, backoff: Backoff, random: RandomSource
) -> Reconnect | Stop:
    """What to do after a connection ended with ``code``, before reconnect attempt ``attempt``.

    A terminal close code (see :func:`roomd.protocol.should_reconnect`) stops at once; otherwise
    the attempt is scheduled unless the backoff is exhausted.
    """
    if not should_reconnect(code):
        return Stop(gave_up=False, reason=f"terminal close code {code}")
    if backoff.exhausted(attempt):
        return Stop(gave_up=True, reason=f"gave up after {attempt - 1} reconnect attempts")
    return Reconnect(attempt, backoff.delay(attempt, random))

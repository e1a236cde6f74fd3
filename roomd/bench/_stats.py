"""Pure statistics of the benchmark: receipt bitmaps, percentiles, merging drivers' results.

Nothing here does I/O or reads a clock; times are integers in nanoseconds of one machine clock
(``time.monotonic_ns``, which is system-wide on Linux and so comparable between processes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

NS_PER_MS = 1_000_000


class Receipts:
    """Which of ``size`` messages one receiver got: a bitmap, and a count of duplicates.

    >>> r = Receipts(3)
    >>> r.mark(0), r.mark(0), r.mark(2)
    (True, False, True)
    >>> r.received, r.duplicates, r.missing
    (2, 1, 1)
    """

    __slots__ = ("_bits", "duplicates", "received")

    def __init__(self, size: int) -> None:
        self._bits = bytearray(size)
        self.received = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._bits)

    def mark(self, index: int) -> bool:
        """Record message ``index``; ``True`` the first time, ``False`` for a duplicate.

        Error handling: ``IndexError`` for an index outside the bitmap (the caller counts it
        as unexpected before it gets here).
        """
        bits = self._bits
        if bits[index]:
            self.duplicates += 1
            return False
        bits[index] = 1
        self.received += 1
        return True

    def has(self, index: int) -> bool:
        return bool(self._bits[index])

    @property
    def missing(self) -> int:
        return len(self._bits) - self.received

    def missing_indexes(self, limit: int = 10) -> list[int]:
        """The first ``limit`` indexes not received (for reports of what was lost)."""
        out: list[int] = []
        start = 0
        bits = self._bits
        while len(out) < limit:
            index = bits.find(0, start)
            if index < 0:
                break
            out.append(index)
            start = index + 1
        return out


def percentile(ordered: Sequence[int | float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, by the nearest-rank method.

    Nearest rank means the result is always one of the values: p99 of 100 values is the 99th
    smallest, p100 the largest. ``nan`` for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    n = len(ordered)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100 * n))
    return float(ordered[rank - 1])


@attrs.frozen
class Summary:
    """Percentiles of a set of latencies, in milliseconds."""

    count: int
    p50: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of_ns(cls, values: Iterable[int]) -> Summary:
        ordered = sorted(values)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        ms = NS_PER_MS
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50) / ms,
            p99=percentile(ordered, 99) / ms,
            max=ordered[-1] / ms,
            mean=sum(ordered) / len(ordered) / ms,
        )

    def as_dict(self, digits: int = 3) -> dict[str, float | int | None]:
        def r(x: float) -> float | None:
            return None if math.isnan(x) else round(x, digits)

        return {
            "count": self.count,
            "p50": r(self.p50),
            "p99": r(self.p99),
            "max": r(self.max),
            "mean": r(self.mean),
        }


def merge_min(arrays: Sequence[Sequence[int]]) -> list[int]:
    """Element-wise minimum of equally long arrays where ``0`` means "none"."""
    if not arrays:
        return []
    out = list(arrays[0])
    for array in arrays[1:]:
        if len(array) != len(out):
            raise ValueError("arrays of different lengths")
        for i, value in enumerate(array):
            if value and (not out[i] or value < out[i]):
                out[i] = value
    return out


def merge_max(arrays: Sequence[Sequence[int]]) -> list[int]:
    """Element-wise maximum of equally long arrays where ``0`` means "none"."""
    if not arrays:
        return []
    out = list(arrays[0])
    for array in arrays[1:]:
        if len(array) != len(out):
            raise ValueError("arrays of different lengths")
        for i, value in enumerate(array):
            if value > out[i]:
                out[i] = value
    return out


def per_message_latencies(sent: Sequence[int], received: Sequence[int]) -> list[int]:
    """``received[i] - sent[i]`` for every message that was both sent and received."""
    if len(sent) != len(received):
        raise ValueError("arrays of different lengths")
    return [r - s for s, r in zip(sent, received, strict=True) if s and r]


def rate(count: int, start_ns: int, end_ns: int) -> float:
    """``count`` events per second over ``start_ns .. end_ns`` (0 for an empty interval)."""
    span = end_ns - start_ns
    return count / (span / 1e9) if span > 0 and count > 0 else 0.0


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count); ``nan`` for no values."""
    ordered = sorted(v for v in values if not math.isnan(v))
    n = len(ordered)
    if n == 0:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# The quantiles a latency distribution is kept at (for plots): every percent, and the tail finer.
CDF_QUANTILES: tuple[float, ...] = (
    *range(0, 99),
    99.0,
    99.5,
    99.9,
    99.95,
    99.99,
    100.0,
)


def cdf_ms(ordered: Sequence[int]) -> list[list[float]]:
    """``[quantile, milliseconds]`` pairs of already sorted latencies in nanoseconds, at
    :data:`CDF_QUANTILES` (a compact distribution, whatever the number of deliveries); the
    0th quantile is the smallest value. Empty for no values.

    >>> points = {q: ms for q, ms in cdf_ms([1_000_000, 2_000_000, 3_000_000, 4_000_000])}
    >>> points[0], points[50], points[75], points[100]
    (1.0, 2.0, 3.0, 4.0)
    """
    if not ordered:
        return []
    return [[q, round(percentile(ordered, q) / NS_PER_MS, 4)] for q in CDF_QUANTILES]

"""Node counters: plain integers on the hot path, exposed to Prometheus at scrape time."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class Stats:
    """Counters of one node. Incrementing is a plain attribute update (no locks)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "close_codes",
        "connections_total",
        "dropped",
        "errors",
        "frames_in",
        "frames_out",
        "http_requests",
        "reads_paused",
        "rejected",
        "resumes",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0  # volatile pushes dropped for slow consumers
        self.reads_paused = 0  # connections not read while their sends waited (flow control)
        self.errors: collections.Counter[str] = collections.Counter()  # by error code
        self.close_codes: collections.Counter[int] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()  # upgrades, by reason
        self.resumes: collections.Counter[str] = collections.Counter()  # by outcome
        self.connections_total = 0
        self.http_requests = 0


class StatsCollector(Collector):
    """Reads a :class:`Stats` and the node's gauges when Prometheus scrapes."""

    def __init__(
        self,
        stats: Stats,
        gauges: Callable[[], dict[str, float]],
        counters: Callable[[], dict[str, tuple[str, float]]] = dict,
    ) -> None:
        self._stats = stats
        self._gauges = gauges
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        for name, value in self._gauges().items():
            yield GaugeMetricFamily(f"roomd_{name}", f"Current number of {name}.", value=value)
        for name, doc, value in (
            ("frames_in", "WebSocket messages received.", s.frames_in),
            ("frames_out", "WebSocket messages queued for sending.", s.frames_out),
            ("bytes_in", "Bytes received on WebSocket connections.", s.bytes_in),
            ("bytes_out", "Bytes written to WebSocket connections.", s.bytes_out),
            ("dropped", "Volatile pushes dropped for slow consumers.", s.dropped),
            (
                "reads_paused",
                "Times a connection was not read while limits.max_waiting_events of its events "
                "waited for the cluster.",
                s.reads_paused,
            ),
            ("connections", "WebSocket connections accepted.", s.connections_total),
            ("http_requests", "Plain HTTP requests served.", s.http_requests),
        ):
            yield CounterMetricFamily(f"roomd_{name}", doc, value=value)
        for name, (doc, value) in self._counters().items():
            yield CounterMetricFamily(f"roomd_{name}", doc, value=value)
        for metric, doc, label, counter in (
            ("errors", "Errors reported to clients, by code.", "code", s.errors),
            ("closes", "Connections closed by the node, by close code.", "code", s.close_codes),
            ("rejected", "Upgrades refused, by reason.", "reason", s.rejected),
            ("resumes", "Resume attempts, by outcome (resumed, or why not).", "outcome", s.resumes),
        ):
            family = CounterMetricFamily(f"roomd_{metric}", doc, labels=[label])
            for key, value in sorted(counter.items()):
                family.add_metric([str(key)], value)
            yield family


def make_registry(
    stats: Stats,
    gauges: Callable[[], dict[str, float]],
    counters: Callable[[], dict[str, tuple[str, float]]] = dict,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats, gauges, counters))
    return registry

"""The workloads: who connects where, what each phase sends, and what the drivers' answers mean.

W1 (``w1-rate``, ``w1-burst``): receivers round-robin over the nodes, all in one room, and one
sender on the first node. The server only lets members send to a room, so the sender is a
member too and sends with ``exceptSelf``: it gets none of its own messages, and every delivery
counted is to a receiver. W2 (``w2-rate``, ``w2-burst``): pairs of users on neighbouring nodes
sending direct messages (``to: {user}``) to each other. W3 (``w3-idle``): idle connections
opened a batch at a time, held, checked alive, closed. ``bus``: raw bus messages from a
publisher process to a subscriber process (:mod:`._bus`) through the broker, and directly (PUB
to SUB), with no node in the path.

Between phases the drivers read until the connections are quiet, so a phase never measures the
join/leave pushes of the one before.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from . import _cost, _profile, _stats
from ._procs import BenchError, Driver, Node, alive, cpu_seconds, get_json, rss_bytes
from ._progress import Progress

ROOM: Final = "bench"
MARGIN: Final = 30.0  # seconds a driver may take beyond the timeout it was given
# Run when none is named: the load workloads.
DEFAULT_WORKLOADS: Final = ("w1-rate", "w1-burst", "w2-rate", "w2-burst", "w3-idle", "bus", "micro")
# W1, W2 and W3 at ten times their sizes (``x10`` names them all; not run by default).
X10_WORKLOADS: Final = ("w1-rate-x10", "w1-burst-x10", "w2-rate-x10", "w2-burst-x10", "w3-idle-x10")
SESSION_WORKLOADS: Final = ("resume", "drain", "crash")  # see ._sessions
FAULT_WORKLOADS: Final = (  # see ._faults; ``faults`` names them all
    "fault-kill",
    "fault-stop",
    "fault-broker-kill",
    "fault-broker-stop",
    "fault-term",
    "fault-restart",
)
WORKLOADS: Final = (*DEFAULT_WORKLOADS, *X10_WORKLOADS, *SESSION_WORKLOADS, *FAULT_WORKLOADS)
# (in report order)
BUS_PATHS: Final = ("broker", "direct")
BUS_JOIN_TIMEOUT: Final = 10.0  # seconds for a probe to get through a new PUB/SUB pair
BUS_PROBE_WAIT: Final = 0.02  # seconds the subscriber waits for each probe
BUS_ACKS_PER_WINDOW: Final = 8  # the subscriber acknowledges every eighth of the window


@attrs.define
class Settings:
    """Sizes and timings of a run (the command line's options)."""

    nodes: int = 5
    urls: list[str] = attrs.field(factory=list)
    drivers: int = 1
    workloads: list[str] = attrs.field(factory=lambda: list(DEFAULT_WORKLOADS))
    receivers: int = 500
    messages: int = 500  # W1 burst
    rate_messages: int = 200  # W1 rate
    rate: float = 20.0
    pairs: int = 100
    pair_messages: int = 50  # W2 rate
    pair_rate: float = 10.0
    pair_burst: int = 100  # W2 burst
    connections: int = 5000
    hold: float = 30.0
    concurrency: int = 200
    x10_receivers: int = 5000  # W1 x10
    x10_pairs: int = 1000  # W2 x10
    x10_connections: int = 20_000  # W3 x10
    bus_messages: int = 100_000
    bus_bytes: int = 150  # of each bus message after its topic
    bus_checkpoint: int = 256  # bus messages sent between two checkpoints
    bus_window: int = 10_000  # bus messages unacknowledged at most (0: no limit)
    bus_direct: bool = True  # the bus also PUB -> SUB directly, for comparison
    micro_sends: int = 20_000  # in-process sends per round of the micro workload
    session_messages: int = 300  # resume, drain, crash: messages at the W1 rate (15 s)
    resume_fraction: float = 0.2  # resume: the share of receivers whose connection drops
    resume_pause: float = 5.0  # resume: seconds a dropped receiver waits at most to resume
    fault_at: float = 3.0  # drain, crash: seconds into the phase
    drain_period: float | None = None  # drain: the nodes' shutdown.drain_period (None: 10 s)
    seed: int | None = None  # of the random choices of the session workloads (None: drawn)
    fault_users: int = 40  # fault-*: users in the room, spread over the nodes
    fault_room_rate: float = 20.0  # fault-*: room messages/s, all users together
    fault_dm_rate: float = 20.0  # fault-*: direct messages/s, all users together
    fault_after: float = 8.0  # fault-*: seconds of traffic once the fault is over
    padding: int = 64
    compress: bool = False  # the drivers offer permessage-deflate
    compress_threshold: int | None = None  # the nodes' compression.threshold (None: default)
    tls: bool = False  # the nodes serve TLS (a certificate made for the run), the drivers use it
    bus_insecure: bool = False  # no CurveZMQ on the cluster's bus (nor on the bus workload's)
    mesh: bool = False  # the nodes' bus a mesh (each node's PUB bound, no broker)
    volatile: bool = False  # W1 and W2 send volatile pushes (not numbered: no stream, no seq)
    timeout: float = 60.0  # a phase's limit beyond its sending time
    grace: float = 0.3  # seconds of listening for duplicates after the last expected delivery
    quiet: float = 0.5  # seconds without traffic that count as settled
    start_timeout: float = 60.0
    profile: str | None = None  # a directory: py-spy the nodes during each phase
    logs: str | None = None  # a directory for the broker's and nodes' output
    plots: str | None = None  # a directory for the plots (SVG)

    def default_sizes(self) -> bool:
        """Whether the sizes and settings are those the targets are stated for (the bus
        workload's have no target)."""
        same = attrs.evolve(self, urls=[], drivers=1, workloads=list(DEFAULT_WORKLOADS))
        same = attrs.evolve(same, profile=None, logs=None, plots=None)
        d = Settings()
        same = attrs.evolve(same, bus_messages=d.bus_messages, bus_bytes=d.bus_bytes)
        same = attrs.evolve(same, bus_checkpoint=d.bus_checkpoint, bus_window=d.bus_window)
        same = attrs.evolve(same, bus_direct=d.bus_direct, micro_sends=d.micro_sends)
        same = attrs.evolve(same, x10_receivers=d.x10_receivers, x10_pairs=d.x10_pairs)
        same = attrs.evolve(same, x10_connections=d.x10_connections)
        return same == d


@attrs.define
class Bench:
    """A running benchmark: settings, the nodes, the broker's pid, the drivers."""

    settings: Settings
    nodes: list[Node]
    broker_pid: int | None
    drivers: list[Driver]
    _phase_ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    progress: Progress = attrs.field(factory=Progress.silent, kw_only=True)

    def next_phase(self) -> int:
        return next(self._phase_ids)

    # Measuring ---------------------------------------------------------------------------------

    def cpu(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {n.name: _opt(cpu_seconds, n.pid) for n in self.nodes}
        # (a mesh has no broker: it costs nothing; with --urls, nothing is known)
        no_broker = self.broker_pid is None and self.settings.mesh
        out["broker"] = 0.0 if no_broker else _opt(cpu_seconds, self.broker_pid)
        for d in self.drivers:
            out[d.name] = cpu_seconds(d.pid)
        return out

    def cpu_used(
        self, before: dict[str, float | None], after: dict[str, float | None]
    ) -> dict[str, Any]:
        used = {k: _sub(after[k], before[k]) for k in before}
        nodes = [used[n.name] for n in self.nodes]
        drivers = [used[d.name] for d in self.drivers]
        return {
            "nodes": _sum(nodes),
            "broker": used["broker"],
            "drivers": _sum(drivers),
            "per_node": {n.name: used[n.name] for n in self.nodes},
            "per_driver": {d.name: used[d.name] for d in self.drivers},
        }

    def rss(self) -> dict[str, int | None]:
        return {n.name: _opt(rss_bytes, n.pid) for n in self.nodes}

    def dead_nodes(self) -> list[str]:
        """The nodes started here whose process has exited."""
        return [n.name for n in self.nodes if n.pid is not None and not alive(n.pid)]

    async def connections(self) -> int | None:
        """Connections open on all nodes together, by their ``/health`` (``None`` when a
        node does not answer)."""
        total = 0
        for node in self.nodes:
            try:
                health = await get_json(node, "/health")
            except BenchError:
                return None
            total += int(health["connections"])
        return total

    async def drained(self, baseline: int | None, timeout: float = 30.0) -> int | None:
        """Wait until the nodes are back to ``baseline`` connections; how many they have."""
        count = await self.connections()
        with trio.move_on_after(timeout):
            while count is not None and count > (baseline or 0):
                await trio.sleep(0.2)
                count = await self.connections()
        return count

    # Driving -----------------------------------------------------------------------------------

    async def on_all(
        self, commands: Sequence[dict[str, Any] | None], timeout: float
    ) -> list[dict[str, Any]]:
        """Send each driver its command (``None``: none) at once; their answers."""
        replies: list[dict[str, Any]] = [{} for _ in self.drivers]

        async def one(i: int, driver: Driver, command: dict[str, Any]) -> None:
            replies[i] = await driver.request(command, timeout + MARGIN)

        async with trio.open_nursery() as nursery:
            for i, (driver, command) in enumerate(zip(self.drivers, commands, strict=True)):
                if command is not None:
                    nursery.start_soon(one, i, driver, command)
        return replies

    async def open(
        self,
        per_driver: list[list[list[Any]]],
        timeout: float,
        *,
        urls: list[list[Any]] | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Open each driver's connections (``urls``: every node's ``[host, port]``, and the
        users resume their sessions after a drop)."""
        concurrency = max(1, self.settings.concurrency // len(self.drivers))
        where = self.progress.counters(len(self.drivers))
        commands = [
            {
                "cmd": "open",
                "targets": t,
                "concurrency": concurrency,
                "timeout": timeout,
                "deflate": self.settings.compress,
                "tls": self.settings.tls,
                "urls": urls,
                "seed": seed,
                "progress": w,
            }
            for t, w in zip(per_driver, where, strict=True)
        ]
        replies = await self.on_all(commands, timeout)
        starts = [r["start_ns"] for r in replies if r["start_ns"]]
        ends = [r["end_ns"] for r in replies if r["end_ns"]]
        opened = sum(r["opened"] for r in replies)
        start, end = min(starts, default=0), max(ends, default=0)
        return {
            "requested": sum(r["requested"] for r in replies),
            "opened": opened,
            "seconds": (end - start) / 1e9 if end else None,
            "opened_per_s": round(_stats.rate(opened, start, end), 1),
            "handshake_ms": _stats.Summary.of_ns(
                itertools.chain.from_iterable(r["handshake_ns"] for r in replies)
            ).as_dict(),
            **_problems(replies),
        }

    async def settle(self) -> None:
        command = {"cmd": "settle", "quiet": self.settings.quiet, "max": 60.0}
        await self.on_all([command] * len(self.drivers), 60.0)

    async def close(self, prefix: str, baseline: int | None) -> dict[str, Any]:
        command = {"cmd": "close", "prefix": prefix, "timeout": 20.0}
        replies = await self.on_all([command] * len(self.drivers), 20.0)
        left = await self.drained(baseline)
        return {
            "closed": sum(r["closed"] for r in replies),
            "forced": sum(r["forced"] for r in replies),
            "server_connections_after": left,
        }

    @contextlib.asynccontextmanager
    async def profiled(self, label: str) -> AsyncIterator[dict[str, Any]]:
        """Profile the nodes during the block if asked to; the summary lands in the dict."""
        out: dict[str, Any] = {}
        pids = {n.name: n.pid for n in self.nodes if n.pid is not None}
        if self.settings.profile is None or not pids:
            yield out
            return
        directory = Path(self.settings.profile)
        async with _profile.profiling(directory, label, pids):
            yield out
        out["profile"] = _profile.summarize(directory, label)

    async def phase(
        self,
        label: str,
        specs: list[dict[str, Any]],
        timeout: float,
        during: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """Arm every driver with its part of a phase, run it, and merge the answers.
        ``during`` runs while the phase does (a fault); what it returns is ``fault``."""
        where = self.progress.counters(len(self.drivers))
        armed = [
            {"cmd": "arm", "phase": spec | {"progress": w}}
            for spec, w in zip(specs, where, strict=True)
        ]
        await self.on_all(armed, 10.0)
        load = os.getloadavg()[0]
        fault: dict[str, Any] = {}

        async def inject() -> None:
            assert during is not None
            fault.update(await during())

        self.progress.begin(label)
        async with self.profiled(label) as profile:
            cpu = self.cpu()
            started = time.monotonic()
            go = {"cmd": "go", "timeout": timeout, "grace": self.settings.grace}
            async with trio.open_nursery() as nursery:
                if during is not None:
                    nursery.start_soon(inject)
                replies = await self.on_all([go] * len(self.drivers), timeout + self.settings.grace)
            wall = time.monotonic() - started
            cpu_after = self.cpu()
        result = merge_phase(replies)
        if during is not None:
            result["fault"] = fault
        result.update(profile)
        result["wall_s"] = round(wall, 3)
        result["cpu_s"] = _rounded(self.cpu_used(cpu, cpu_after))
        result["cost"] = _cost.phase_cost(result)
        self.progress.end(label, _phase_summary(result))
        result["rss_mb"] = _mb(self.rss())
        result["load_before"] = load
        if self.dead_nodes():
            result["dead_nodes"] = self.dead_nodes()
        return result


def _phase_summary(result: dict[str, Any]) -> str:
    """A phase's one line: what arrived, and what the server spent."""
    cost = result["cost"]["us_per_delivery"]
    return (
        f"{result['received']:,}/{result['expected']:,} delivered, {result['lost']:,} lost, "
        f"{result['duplicates']:,} dup{' TIMEOUT' if result['timed_out'] else ''}; server "
        f"{'-' if cost is None else f'{cost:,.2f}'} us per delivery"
    )


def merge_phase(replies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One phase's figures from the answers of all drivers (pure)."""
    sent = _stats.merge_max([r["sent_ns"] for r in replies])
    first = _stats.merge_min([r["first"] for r in replies])
    last = _stats.merge_max([r["last"] for r in replies])
    received = sum(r["received"] for r in replies)
    expected = sum(r["expected"] for r in replies)
    first_send = min((t for t in sent if t), default=0)
    last_delivery = max(last, default=0)
    latencies = sorted(itertools.chain.from_iterable(r["latencies"] for r in replies))
    return {
        "timed_out": any(r["timed_out"] for r in replies),
        "messages": len(sent),
        "sent": sum(r["sent"] for r in replies),
        "expected": expected,
        "received": received,
        "lost": expected - received,
        "duplicates": sum(r["duplicates"] for r in replies),
        "unexpected": sum(r["unexpected"] for r in replies),
        "stray": sum(r["stray"] for r in replies),
        "numbered": sum(r.get("numbered", 0) for r in replies),
        "missing_receivers": sum(r["missing_receivers"] for r in replies),
        "undelivered_messages": sum(1 for s, f in zip(sent, first, strict=True) if s and not f),
        "lost_examples": [x for r in replies for x in r["lost_examples"]][:5],
        "duration_s": round((last_delivery - first_send) / 1e9, 4) if received else None,
        "deliveries_per_s": round(_stats.rate(received, first_send, last_delivery), 1),
        "latency_ms": {
            "all": _stats.Summary.of_ns(latencies).as_dict(),
            "first": _stats.Summary.of_ns(_stats.per_message_latencies(sent, first)).as_dict(),
            "last": _stats.Summary.of_ns(_stats.per_message_latencies(sent, last)).as_dict(),
        },
        "latency_cdf_ms": _stats.cdf_ms(latencies),
        **_problems(replies),
        **(_merge_sessions(replies) if "reconnect_log" in replies[0] else {}),
    }


def _merge_sessions(replies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The session workloads' own figures, summed or joined over drivers."""
    retries: dict[str, int] = {}
    for reply in replies:
        for reason, n in reply["retries"].items():
            retries[reason] = retries.get(reason, 0) + n
    return {
        **{k: sum(r[k] for r in replies) for k in ("acked", "refused", "unacked")},
        "unacked_delivered": sum(r["unacked_delivered"] for r in replies),
        "sent_ns": _stats.merge_max([r["sent_ns"] for r in replies]),
        "arrivals": [x for r in replies for x in r["arrivals"]],
        "reconnect_log": [x for r in replies for x in r["reconnect_log"]],
        "still_reconnecting": [x for r in replies for x in r["still_reconnecting"]],
        "retries": retries,
    }


# W1 --------------------------------------------------------------------------------------------


async def run_w1(
    bench: Bench, phases: list[str], size: int | None = None
) -> dict[str, dict[str, Any]]:
    """W1's phases in one room of ``size`` receivers (``--receivers``)."""
    s, nodes, count = bench.settings, bench.nodes, len(bench.drivers)
    size = s.receivers if size is None else size
    baseline = await bench.connections()
    sender = "w1-s"
    receivers = [f"w1-r{i}" for i in range(size)]
    bench.progress.note(f"w1: opening {size + 1:,} connections")
    targets: list[list[list[Any]]] = [[] for _ in range(count)]
    targets[0].append(_target(sender, nodes[0], ROOM))
    for i, user in enumerate(receivers):
        targets[i % count].append(_target(user, nodes[i % len(nodes)], ROOM))
    setup = await bench.open(targets, max(60.0, size / 50))
    await bench.settle()
    results: dict[str, dict[str, Any]] = {}
    for name in phases:
        burst = name.startswith("w1-burst")
        messages = s.messages if burst else s.rate_messages
        phase_id = bench.next_phase()
        specs = []
        for d in range(count):
            spec: dict[str, Any] = {
                "id": phase_id,
                "messages": messages,
                "senders_total": 1,
                "rate": None if burst else s.rate,
                "padding": s.padding,
                "volatile": s.volatile,
                "senders": [],
                "receivers": [{"user": u, "expect": [0]} for u in receivers[d::count]],
            }
            if d == 0:
                spec["senders"] = [
                    {"user": sender, "index": 0, "to": {"room": ROOM}, "except_self": True}
                ]
            specs.append(spec)
        timeout = s.timeout + (0 if burst else messages / s.rate)
        results[name] = {"size": size, "size_unit": "receivers", "setup": setup}
        results[name] |= await bench.phase(name, specs, timeout)
        await bench.settle()
    teardown = await bench.close("w1-", baseline)
    for result in results.values():
        result["teardown"] = teardown
    return results


# W2 --------------------------------------------------------------------------------------------


async def run_w2(
    bench: Bench, phases: list[str], size: int | None = None
) -> dict[str, dict[str, Any]]:
    """W2's phases between ``size`` pairs of users (``--pairs``)."""
    s, nodes, count = bench.settings, bench.nodes, len(bench.drivers)
    size = s.pairs if size is None else size
    baseline = await bench.connections()
    targets: list[list[list[Any]]] = [[] for _ in range(count)]
    bench.progress.note(f"w2: opening {2 * size:,} connections")
    for i in range(size):
        targets[i % count].append(_target(f"w2-a{i}", nodes[i % len(nodes)], None))
        targets[i % count].append(_target(f"w2-b{i}", nodes[(i + 1) % len(nodes)], None))
    setup = await bench.open(targets, max(60.0, size / 25))
    await bench.settle()
    results: dict[str, dict[str, Any]] = {}
    for name in phases:
        burst = name.startswith("w2-burst")
        messages = s.pair_burst if burst else s.pair_messages
        phase_id = bench.next_phase()
        specs = []
        for d in range(count):
            senders, receivers = [], []
            for i in range(d, size, count):
                a, b = f"w2-a{i}", f"w2-b{i}"
                senders.append({"user": a, "index": 2 * i, "to": {"user": b}})
                senders.append({"user": b, "index": 2 * i + 1, "to": {"user": a}})
                receivers.append({"user": a, "expect": [2 * i + 1]})
                receivers.append({"user": b, "expect": [2 * i]})
            specs.append(
                {
                    "id": phase_id,
                    "messages": messages,
                    "senders_total": 2 * size,
                    "rate": None if burst else s.pair_rate,
                    "padding": s.padding,
                    "volatile": s.volatile,
                    "senders": senders,
                    "receivers": receivers,
                }
            )
        timeout = s.timeout + (0 if burst else messages / s.pair_rate)
        results[name] = {"size": size, "size_unit": "pairs", "setup": setup}
        results[name] |= await bench.phase(name, specs, timeout)
        await bench.settle()
    teardown = await bench.close("w2-", baseline)
    for result in results.values():
        result["teardown"] = teardown
    return results


# W3 --------------------------------------------------------------------------------------------


async def run_w3(bench: Bench, size: int | None = None, name: str = "w3-idle") -> dict[str, Any]:
    """W3 with ``size`` idle connections (``--connections``). Error handling:
    :class:`BenchError` before anything is opened when this process's file-descriptor limit,
    which the nodes and drivers inherit, cannot hold them."""
    s, nodes, count = bench.settings, bench.nodes, len(bench.drivers)
    size = s.connections if size is None else size
    shortfall = fd_shortfall(size, count, sum(1 for n in nodes if n.pid is not None))
    if shortfall is not None:
        raise BenchError(shortfall)
    baseline = await bench.connections()
    targets: list[list[list[Any]]] = [[] for _ in range(count)]
    for i in range(size):
        targets[i % count].append(_target(f"w3-{i}", nodes[i % len(nodes)], None))
    await trio.sleep(1.0)  # let the nodes' memory settle after the previous workload
    rss_before = bench.rss()
    bench.progress.begin(name, "handshakes", f"{size:,} connections, held {s.hold:g} s")
    async with bench.profiled("w3-open") as profile:
        cpu = bench.cpu()
        opened = await bench.open(targets, max(60.0, size / 100))
        cpu_open = bench.cpu_used(cpu, bench.cpu())
    now_open = await bench.connections()
    server_open = None if now_open is None else now_open - (baseline or 0)
    rss_open = bench.rss()
    cpu_held = bench.cpu()
    held_at = time.monotonic()
    hold = await bench.on_all([{"cmd": "hold", "prefix": "w3-", "seconds": s.hold}] * count, s.hold)
    held_s = time.monotonic() - held_at
    rss_held = bench.rss()
    cpu_after = bench.cpu()
    cpu_hold = bench.cpu_used(cpu, cpu_after)
    cpu_idle = bench.cpu_used(cpu_held, cpu_after)
    pings = await bench.on_all([{"cmd": "ping", "prefix": "w3-", "timeout": 30.0}] * count, 30.0)
    alive = sum(r["answered"] for r in pings)
    teardown = await bench.close("w3-", baseline)
    await trio.sleep(1.0)
    rss_closed = bench.rss()
    per_conn = _per_conn(rss_before, rss_held, opened["opened"])
    cost = _cost.idle_cost(opened["opened"], cpu_open, cpu_idle, held_s, per_conn)
    ms, kib = cost["ms_per_connection"], cost["kib_per_connection"]
    bench.progress.end(
        name,
        f"{opened['opened']:,}/{size:,} opened, {alive:,} alive after {s.hold:g} s; server "
        f"{'-' if ms is None else f'{ms:.2f}'} ms per connection opened, "
        f"{'-' if kib is None else f'{kib:.2f}'} KiB per idle connection",
    )
    return {
        "connections": size,
        "size": size,
        "size_unit": "connections",
        "setup": opened,
        "opened": opened["opened"],
        "opened_per_s": opened["opened_per_s"],
        "server_connections": server_open,
        "held_s": s.hold,
        "dropped_during_hold": sum(r["dropped"] for r in hold),
        "server_pings_answered": sum(r["server_pings"] for r in hold),
        "alive_after_hold": alive,
        "all_alive": alive == size,
        "rss_per_connection_kb": per_conn,
        "rss_mb": {
            "before": _mb(rss_before),
            "open": _mb(rss_open),
            "held": _mb(rss_held),
            "closed": _mb(rss_closed),
        },
        "cpu_s": {
            "open": _rounded(cpu_open),
            "open_and_hold": _rounded(cpu_hold),
            "hold": _rounded(cpu_idle),
        },
        "hold_wall_s": round(held_s, 3),
        "cost": cost,
        "teardown": teardown,
        **profile,
        **({"dead_nodes": bench.dead_nodes()} if bench.dead_nodes() else {}),
        **_problems([*hold, *pings]),
    }


# bus -------------------------------------------------------------------------------------------


async def run_bus(
    bench: Bench, endpoints: tuple[str, str], keys: str | None = None
) -> dict[str, Any]:
    """The bus through the broker at ``endpoints`` (frontend, backend), then directly. The
    drivers of ``bench`` are the publisher and the subscriber process (:mod:`._bus`); with
    ``keys`` (the cluster's key directory) both speak CurveZMQ, as nodes do."""
    paths = BUS_PATHS if bench.settings.bus_direct else BUS_PATHS[:1]
    results = {path: await _bus_path(bench, path, endpoints, keys) for path in paths}
    broker = results["broker"]
    return {
        "messages": broker["messages"],
        "message_bytes": broker["message_bytes"],
        "checkpoint": broker["checkpoint"],
        "window": broker["window"],
        "messages_per_s": broker["messages_per_s"],
        **{k: sum(r[k] for r in results.values()) for k in ("sent", "received", "lost")},
        "duplicates": sum(r["duplicates"] for r in results.values()),
        "timed_out": any(r["timed_out"] for r in results.values()),
        "secure": keys is not None,
        "paths": results,
        **({"dead_nodes": bench.dead_nodes()} if bench.dead_nodes() else {}),
    }


async def _bus_path(
    bench: Bench, path: str, endpoints: tuple[str, str], keys: str | None
) -> dict[str, Any]:
    """One run over ``path``; CPU is read around the publishing and collecting only."""
    s, (pub, sub) = bench.settings, bench.drivers
    size = {"messages": s.bus_messages, "bytes": s.bus_bytes}
    opening = {"cmd": "pub", "path": path, "frontend": endpoints[0], "backend": endpoints[1]}
    opened = await pub.request(opening | size | {"keys": keys}, MARGIN)
    subscribing = {"cmd": "sub", "endpoint": opened["endpoint"], "acks": opened["acks"]}
    subscribing |= {"keys": keys, "server_key": opened["server_key"]}
    await sub.request(subscribing, MARGIN)
    setup = await _join(pub, sub, path)
    ack_every = max(1, s.bus_window // BUS_ACKS_PER_WINDOW) if s.bus_window else 0
    arm = {"cmd": "arm", "ack_every": ack_every}
    setup |= await sub.request(arm | size, MARGIN)
    load = os.getloadavg()[0]
    cpu = bench.cpu()
    started = time.monotonic()
    limits = {"timeout": s.timeout, "quiet": s.quiet}
    publish = {"cmd": "publish", "checkpoint": s.bus_checkpoint, "window": s.bus_window}
    sent = await pub.request(publish | limits, s.timeout + MARGIN)
    collect = {"cmd": "collect", "sent": sent["sent"], "grace": s.grace}
    got = await sub.request(collect | limits, s.timeout + MARGIN)
    wall = time.monotonic() - started
    used = bench.cpu_used(cpu, bench.cpu())
    for end in (pub, sub):
        await end.request({"cmd": "close"}, MARGIN)
    first, last = sent["first_ns"], got["last_ns"]
    return {
        "messages": s.bus_messages,
        "message_bytes": opened["message_bytes"],
        "checkpoint": s.bus_checkpoint,
        "window": s.bus_window,
        "sent": sent["sent"],
        "refused": sent["refused"],
        "stalled": sent["stalled"],
        "window_waits": sent["window_waits"],
        **{k: got[k] for k in ("received", "lost", "duplicates", "unexpected", "stray")},
        "lost_examples": got["lost_examples"],
        "timed_out": sent["timed_out"] or got["timed_out"],
        "messages_per_s": round(_stats.rate(got["received"], first, last), 1),
        "sent_per_s": round(_stats.rate(sent["sent"], first, sent["last_ns"]), 1),
        "send_s": sent["send_s"],
        "duration_s": round((last - first) / 1e9, 4) if last else None,
        "batches": got["batches"],
        "mean_batch": got["mean_batch"],
        "setup": setup,
        "wall_s": round(wall, 3),
        "cpu_s": _rounded(
            {
                "broker": used["broker"],
                "pub": used["per_driver"][pub.name],
                "sub": used["per_driver"][sub.name],
                "nodes": used["nodes"],
            }
        ),
        "load_before": load,
    }


async def _join(pub: Driver, sub: Driver, path: str) -> dict[str, Any]:
    """Probe until one gets through: a SUB misses what is published before its subscription
    reached the publisher (the slow joiner)."""
    started = time.monotonic()
    for probes in range(1, int(BUS_JOIN_TIMEOUT / BUS_PROBE_WAIT) + 1):
        await pub.request({"cmd": "probe"}, MARGIN)
        probed = await sub.request({"cmd": "probed", "wait": BUS_PROBE_WAIT}, MARGIN)
        if probed["arrived"]:
            return {"probes": probes, "join_s": round(time.monotonic() - started, 4)}
    raise BenchError(f"bus: no probe came through the {path} path in {BUS_JOIN_TIMEOUT:g} s")


# Helpers ---------------------------------------------------------------------------------------

FD_SPARE_DRIVER: Final = 64  # descriptors a driver uses besides its connections
FD_SPARE_NODE: Final = 256  # a node's: its listener, bus sockets, ZeroMQ's own, files


def fd_shortfall(connections: int, drivers: int, nodes: int) -> str | None:
    """Why this process's file-descriptor limit (inherited by the nodes and drivers it starts,
    raised to the hard limit at start) cannot hold ``connections`` split over ``drivers`` and
    ``nodes`` (0: nodes not started here); ``None`` when it can."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    per_driver = -(-connections // drivers) + FD_SPARE_DRIVER
    per_node = -(-connections // nodes) + FD_SPARE_NODE if nodes else 0
    need = max(per_driver, per_node)
    if need <= soft:
        return None
    return (
        f"the file-descriptor limit is too low for {connections:,} connections: each driver "
        f"needs about {per_driver:,} and each node {per_node:,}, the limit is {soft:,} "
        f"(hard limit {'unlimited' if hard == resource.RLIM_INFINITY else f'{hard:,}'}); "
        f"run with --drivers {-(-connections // max(1, soft - FD_SPARE_DRIVER))} or more, or "
        "raise the hard limit (ulimit -Hn, limits.conf, LimitNOFILE)"
    )


def _target(user: str, node: Node, room: str | None) -> list[Any]:
    return [user, node.host, node.port, room, None]


def _problems(replies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Error frames, close codes and failed opens summed over drivers' answers."""
    out: dict[str, Any] = {"errors": {}, "closes": {}, "failures": {}}
    for reply in replies:
        for key in ("errors", "closes", "failures"):
            for name, n in reply.get(key, {}).items():
                out[key][name] = out[key].get(name, 0) + n
    out["error_messages"] = [m for r in replies for m in r.get("error_messages", [])][:5]
    return out


def _per_conn(
    before: dict[str, int | None], after: dict[str, int | None], conns: int
) -> float | None:
    if conns <= 0 or any(v is None for v in [*before.values(), *after.values()]):
        return None
    delta = sum(v or 0 for v in after.values()) - sum(v or 0 for v in before.values())
    return round(delta / conns / 1024, 2)


def _opt(read: Any, pid: int | None) -> Any:
    return None if pid is None else read(pid)


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _sum(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _rounded(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _rounded(v) for k, v in data.items()}
    if isinstance(data, float):
        return None if math.isnan(data) else round(data, 3)
    return data


def _mb(rss: dict[str, int | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v / 2**20, 1) for k, v in rss.items()}

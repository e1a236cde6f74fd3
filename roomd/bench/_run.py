"""``roomd bench``: start a cluster (or use one), run the workloads, print and save the report.

The orchestrator is a Trio program that does no load itself: it starts the broker and the
nodes (:mod:`._procs`), the driver processes (:mod:`._driver`), tells the drivers what to do
(:mod:`._workloads`), reads CPU and memory from /proc, and renders :mod:`._report`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import orjson
import trio

from . import _cost, _plots, _report
from ._faults import FAULTS, run_fault
from ._micro import run_micro
from ._procs import BenchError, Cluster, ClusterOptions, Node, drivers, get_json, local_cluster
from ._progress import Progress
from ._sessions import run_session
from ._workloads import (
    DEFAULT_WORKLOADS,
    FAULT_WORKLOADS,
    SESSION_WORKLOADS,
    WORKLOADS,
    X10_WORKLOADS,
    Bench,
    Settings,
    run_bus,
    run_w1,
    run_w2,
    run_w3,
)

BUS_SKIPPED: Final = "with --urls the broker's endpoints are not known"
BUS_SKIPPED_MESH: Final = "a mesh has no broker (the bus workload measures one)"


def _parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="roomd bench",
        description="Start a broker and nodes on 127.0.0.1 (or use --urls), drive the "
        "workloads from separate driver processes, print a table (and --json FILE).",
    )
    p.add_argument("--nodes", type=int, default=d.nodes, help=f"nodes to start ({d.nodes})")
    p.add_argument(
        "--urls",
        help="comma-separated ws://host:port URLs of a running cluster (dev auth, limits "
        "rate/burst high enough, permissions allowing room and user sends) instead of starting one",
    )
    p.add_argument(
        "--workloads",
        default=",".join(DEFAULT_WORKLOADS),
        help=f"comma-separated, of {','.join(WORKLOADS)}; 'faults' for every fault-*, "
        f"'x10' for every *-x10 (default: {','.join(DEFAULT_WORKLOADS)})",
    )
    p.add_argument("--drivers", type=int, default=d.drivers, help="driver processes (1)")
    g = p.add_argument_group("W1: one room")
    g.add_argument("--receivers", type=int, default=d.receivers, help=f"({d.receivers})")
    g.add_argument("--messages", type=int, default=d.messages, help=f"burst ({d.messages})")
    g.add_argument("--rate-messages", type=int, default=d.rate_messages, help="(200)")
    g.add_argument("--rate", type=float, default=d.rate, help="messages/s (20)")
    g = p.add_argument_group("W2: direct messages between pairs on different nodes")
    g.add_argument("--pairs", type=int, default=d.pairs, help=f"({d.pairs})")
    g.add_argument("--pair-messages", type=int, default=d.pair_messages, help="each (50)")
    g.add_argument("--pair-rate", type=float, default=d.pair_rate, help="messages/s each (10)")
    g.add_argument("--pair-burst", type=int, default=d.pair_burst, help="burst, each (100)")
    g = p.add_argument_group("W3: idle connections")
    g.add_argument("--connections", type=int, default=d.connections, help=f"({d.connections})")
    g.add_argument("--hold", type=float, default=d.hold, help=f"seconds ({d.hold:g})")
    g.add_argument(
        "--concurrency", type=int, default=d.concurrency, help="handshakes at a time (200)"
    )
    g = p.add_argument_group("x10: W1, W2 and W3 at ten times their sizes (not run by default)")
    g.add_argument(
        "--x10-receivers", type=int, default=d.x10_receivers, help=f"W1 ({d.x10_receivers:,})"
    )
    g.add_argument("--x10-pairs", type=int, default=d.x10_pairs, help=f"W2 ({d.x10_pairs:,})")
    g.add_argument(
        "--x10-connections",
        type=int,
        default=d.x10_connections,
        help=f"W3 ({d.x10_connections:,})",
    )
    g = p.add_argument_group("bus: raw bus messages through the broker (no nodes in the path)")
    g.add_argument("--bus-messages", type=int, default=d.bus_messages, help=f"({d.bus_messages:,})")
    g.add_argument(
        "--bus-bytes", type=int, default=d.bus_bytes, help=f"each, after the topic ({d.bus_bytes})"
    )
    g.add_argument(
        "--bus-checkpoint",
        type=int,
        default=d.bus_checkpoint,
        help=f"messages sent between checkpoints ({d.bus_checkpoint})",
    )
    g.add_argument(
        "--bus-window",
        type=int,
        default=d.bus_window,
        help=f"messages unacknowledged at most, 0 for no limit ({d.bus_window:,})",
    )
    g.add_argument(
        "--bus-direct",
        action=argparse.BooleanOptionalAction,
        default=d.bus_direct,
        help="also PUB -> SUB without the broker, for comparison (yes)",
    )
    g.add_argument(
        "--micro-sends",
        type=int,
        default=d.micro_sends,
        help=f"micro: in-process sends per round ({d.micro_sends:,})",
    )
    g = p.add_argument_group("resume, drain, crash: W1's room and rate, receivers that resume")
    g.add_argument(
        "--session-messages",
        type=int,
        default=d.session_messages,
        help=f"messages sent at --rate ({d.session_messages})",
    )
    g.add_argument(
        "--resume-fraction",
        type=float,
        default=d.resume_fraction,
        help=f"resume: share of receivers dropped ({d.resume_fraction:g})",
    )
    g.add_argument(
        "--resume-pause",
        type=float,
        default=d.resume_pause,
        help=f"resume: longest pause before resuming, seconds ({d.resume_pause:g})",
    )
    g.add_argument(
        "--fault-at",
        type=float,
        default=d.fault_at,
        help=f"drain, crash: seconds into the phase ({d.fault_at:g})",
    )
    g.add_argument(
        "--drain-period",
        type=float,
        help="drain: the nodes' shutdown.drain_period (the node's default, 10 s)",
    )
    g.add_argument("--seed", type=int, help="of the random drops and choices (drawn)")
    g = p.add_argument_group("fault-*: faults of the cluster under light traffic (Trio clients)")
    g.add_argument("--fault-users", type=int, default=d.fault_users, help=f"({d.fault_users})")
    g.add_argument(
        "--fault-room-rate",
        type=float,
        default=d.fault_room_rate,
        help=f"room messages/s, all users ({d.fault_room_rate:g})",
    )
    g.add_argument(
        "--fault-dm-rate",
        type=float,
        default=d.fault_dm_rate,
        help=f"direct messages/s, all users ({d.fault_dm_rate:g})",
    )
    g.add_argument(
        "--fault-after",
        type=float,
        default=d.fault_after,
        help=f"seconds of traffic after the fault ({d.fault_after:g}); --fault-at: before it",
    )
    g = p.add_argument_group("run")
    g.add_argument("--padding", type=int, default=d.padding, help="payload padding bytes (64)")
    g.add_argument(
        "--compress",
        action="store_true",
        help="the drivers offer permessage-deflate (the nodes accept it by default)",
    )
    g.add_argument(
        "--compress-threshold",
        type=int,
        metavar="BYTES",
        help="the nodes' compression.threshold (default: the node's default)",
    )
    g.add_argument(
        "--tls",
        action="store_true",
        help="the nodes serve wss:// with a certificate made for the run (openssl)",
    )
    g.add_argument(
        "--bus-insecure",
        action="store_true",
        help="a plaintext bus (cluster.insecure) instead of CurveZMQ, for comparison",
    )
    g.add_argument(
        "--mesh",
        action="store_true",
        help="the nodes' bus a mesh (each node's PUB bound, no broker) instead of a broker",
    )
    g.add_argument(
        "--volatile",
        action="store_true",
        help="W1 and W2 send volatile pushes (not numbered in a stream: what a reliable push's "
        "numbering costs, for comparison)",
    )
    g.add_argument(
        "--timeout", type=float, default=d.timeout, help="phase limit beyond sending (60 s)"
    )
    g.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    g.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run everything N times (a fresh cluster each time) and add a table of medians",
    )
    g.add_argument("--logs", metavar="DIR", help="save the broker's and nodes' output in DIR")
    g.add_argument(
        "--plots",
        metavar="DIR",
        help="write SVG plots in DIR: each W1/W2 phase's latency distribution, and the "
        "scaling of cost with size when x10 workloads ran",
    )
    g.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy every node during each phase; raw stacks in DIR, top functions in the "
        "report (the sampling costs CPU: do not compare profiled figures with targets)",
    )
    return p


def parse_settings(argv: Sequence[str]) -> tuple[Settings, str | None, int]:
    args = _parser().parse_args(argv)
    workloads = []
    for name in (w.strip() for w in args.workloads.split(",")):
        groups = {"faults": list(FAULT_WORKLOADS), "x10": list(X10_WORKLOADS)}
        workloads += groups.get(name, [name] if name else [])
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"roomd bench: unknown workload(s) {unknown}; choose from {WORKLOADS}")
    urls = [u.strip() for u in (args.urls or "").split(",") if u.strip()]
    settings = Settings(
        nodes=len(urls) if urls else args.nodes,
        urls=urls,
        drivers=args.drivers,
        workloads=workloads,
        receivers=args.receivers,
        messages=args.messages,
        rate_messages=args.rate_messages,
        rate=args.rate,
        pairs=args.pairs,
        pair_messages=args.pair_messages,
        pair_rate=args.pair_rate,
        pair_burst=args.pair_burst,
        connections=args.connections,
        hold=args.hold,
        concurrency=args.concurrency,
        x10_receivers=args.x10_receivers,
        x10_pairs=args.x10_pairs,
        x10_connections=args.x10_connections,
        bus_messages=args.bus_messages,
        bus_bytes=args.bus_bytes,
        bus_checkpoint=args.bus_checkpoint,
        bus_window=args.bus_window,
        bus_direct=args.bus_direct,
        micro_sends=args.micro_sends,
        session_messages=args.session_messages,
        resume_fraction=args.resume_fraction,
        resume_pause=args.resume_pause,
        fault_at=args.fault_at,
        drain_period=args.drain_period,
        seed=args.seed,
        fault_users=args.fault_users,
        fault_room_rate=args.fault_room_rate,
        fault_dm_rate=args.fault_dm_rate,
        fault_after=args.fault_after,
        padding=args.padding,
        compress=args.compress,
        compress_threshold=args.compress_threshold,
        tls=args.tls,
        bus_insecure=args.bus_insecure,
        mesh=args.mesh,
        volatile=args.volatile,
        timeout=args.timeout,
        profile=args.profile,
        logs=args.logs,
        plots=args.plots,
    )
    if any(url.startswith("wss://") for url in urls):
        settings = attrs.evolve(settings, tls=True)
    if settings.nodes < 1 or settings.drivers < 1:
        raise SystemExit("roomd bench: --nodes and --drivers must be at least 1")
    if settings.mesh and urls:
        raise SystemExit("roomd bench: --mesh starts the nodes: it cannot go with --urls")
    brokers = [w for w in workloads if w.startswith("fault-broker-")]
    if settings.mesh and brokers:
        raise SystemExit(f"roomd bench: a mesh has no broker: {', '.join(brokers)} cannot run")
    if args.repeat < 1:
        raise SystemExit("roomd bench: --repeat must be at least 1")
    if settings.bus_messages < 1 or settings.bus_checkpoint < 1 or settings.bus_window < 0:
        raise SystemExit(
            "roomd bench: --bus-messages and --bus-checkpoint must be at least 1, "
            "--bus-window at least 0"
        )
    return settings, args.json, args.repeat


def _node_of(url: str, index: int) -> Node:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise SystemExit(f"roomd bench: not a ws:// or wss:// URL: {url!r}")
    tls = parts.scheme == "wss"
    return Node(f"url{index + 1}", parts.hostname, parts.port or (443 if tls else 80), tls=tls)


@contextlib.asynccontextmanager
async def _cluster(
    settings: Settings, defaults: bool = False, label: str | None = None
) -> AsyncIterator[Cluster]:
    """The cluster to run on: started here (``defaults``: with the node's own cluster
    heartbeat, for the session and fault workloads; its logs in a directory named ``label``
    under ``--logs``), or the one of ``--urls``."""
    if not settings.urls:
        options = ClusterOptions(
            settings.compress_threshold,
            settings.tls,
            insecure=settings.bus_insecure,
            mesh=settings.mesh,
        )
        if defaults:
            options = attrs.evolve(options, heartbeat=None, drain_period=settings.drain_period)
        logs = settings.logs
        if logs is not None and label is not None:
            logs = str(Path(logs) / label)
        async with local_cluster(settings.nodes, settings.start_timeout, logs, options) as cluster:
            yield cluster
        return
    nodes = [_node_of(url, i) for i, url in enumerate(settings.urls)]
    for node in nodes:
        health = await get_json(node, "/health")
        if health.get("status") != "ok":
            raise BenchError(f"{node.host}:{node.port} is {health.get('status')!r}")
    yield Cluster(nodes)


async def run(settings: Settings, command: str, progress: Progress | None = None) -> dict[str, Any]:
    """Run the selected workloads; the report document (see :func:`_report.render`).
    ``progress``: where to show what is going on (default: nowhere)."""
    load_start = list(os.getloadavg())
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    received: list[int] = []
    progress = progress or Progress.silent()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signal, signals, nursery.cancel_scope, received, progress)
            nursery.start_soon(progress.redraw)
            try:
                await _workloads(settings, results, progress)
            finally:
                progress.close()
            nursery.cancel_scope.cancel()
    if received:
        raise BenchError(f"stopped by {signal.Signals(received[0]).name}")
    results = {name: results[name] for name in WORKLOADS if name in results}
    _report.add_verdicts(results)
    return {
        "run": {
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "local": not settings.urls,
            "mesh": settings.mesh,
            "volatile": settings.volatile,
            "nodes": settings.nodes,
            "drivers": settings.drivers,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "revision": _revision(),
            "load_start": load_start,
            "load_end": list(os.getloadavg()),
            "default_sizes": settings.default_sizes(),
            "fd_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            "settings": attrs.asdict(settings),
        },
        "results": results,
        "scaling": _cost.scaling(results),
    }


async def _workloads(
    settings: Settings, results: dict[str, dict[str, Any]], progress: Progress
) -> None:
    """The bus, then W1 and W2, on one cluster (the bus first, while the nodes are idle); W3 on
    a fresh one (when this run starts the cluster), so that its memory per connection is not
    flattered by memory the nodes freed after W1 and W2."""
    w1 = [w for w in settings.workloads if w.startswith("w1-") and w not in X10_WORKLOADS]
    w2 = [w for w in settings.workloads if w.startswith("w2-") and w not in X10_WORKLOADS]
    bus = "bus" in settings.workloads
    if bus and (settings.urls or settings.mesh):
        why = BUS_SKIPPED if settings.urls else BUS_SKIPPED_MESH
        results["bus"] = {"skipped": why}
        progress.say(f"bus: skipped: {why}")
        bus = False
    if w1 or w2 or bus:
        async with _cluster(settings) as cluster:
            if bus:
                what = f"{settings.bus_messages:,} messages through the broker"
                progress.begin("bus", "", what)
                await _guarded(results, ["bus"], _one("bus", _bus(settings, cluster)), progress)
                progress.end("bus", _bus_summary(results["bus"]))
            if w1 or w2:
                async with drivers(settings.drivers) as started:
                    bench = _bench(settings, cluster, started, progress)
                    if w1:
                        work = run_w1(bench, sorted(w1, key=WORKLOADS.index))
                        await _guarded(results, w1, work, progress)
                    if w2:
                        work = run_w2(bench, sorted(w2, key=WORKLOADS.index))
                        await _guarded(results, w2, work, progress)
    if "micro" in settings.workloads:
        progress.begin("micro", "", "the node's own work per message, in this process")
        results["micro"] = await trio.to_thread.run_sync(run_micro, settings.micro_sends)
        progress.end("micro", f"{results['micro']['direct_us']:.2f} us per direct send")
    for name in (w for w in SESSION_WORKLOADS if w in settings.workloads):
        async with (
            _cluster(settings, defaults=True, label=name) as cluster,
            drivers(settings.drivers) as started,
        ):
            bench = _bench(settings, cluster, started, progress)
            progress.note(f"{name}: {settings.receivers} receivers in one room")
            work = run_session(bench, name, cluster.control)
            await _guarded(results, [name], _one(name, work), progress)
    for fault in (w for w in FAULT_WORKLOADS if w in settings.workloads):
        async with (
            _cluster(settings, defaults=True, label=fault) as cluster,
            drivers(settings.drivers, "roomd.bench._clients", "clients") as started,
        ):
            bench = _bench(settings, cluster, started, progress)
            progress.begin(fault, "", f"{FAULTS[fault]}, {settings.fault_users} users")
            work = run_fault(bench, fault, cluster.control)
            await _guarded(results, [fault], _one(fault, work), progress)
            r = results[fault]
            progress.end(fault, "failed" if "error" in r else f"{r['lost']:,} lost")
    idle = (("w3-idle", settings.connections), ("w3-idle-x10", settings.x10_connections))
    for w3, size in idle:
        if w3 in settings.workloads:
            await _w3(settings, results, w3, size, progress)
    x1: list[str] = [w for w in X10_WORKLOADS if w in settings.workloads and w.startswith("w1-")]
    x2: list[str] = [w for w in X10_WORKLOADS if w in settings.workloads and w.startswith("w2-")]
    if x1 or x2:
        async with (
            _cluster(settings, label="x10") as cluster,
            drivers(settings.drivers) as started,
        ):
            bench = _bench(settings, cluster, started, progress)
            if x1:
                await _guarded(results, x1, run_w1(bench, x1, settings.x10_receivers), progress)
            if x2:
                await _guarded(results, x2, run_w2(bench, x2, settings.x10_pairs), progress)


def _bench(settings: Settings, cluster: Cluster, started: list[Any], progress: Progress) -> Bench:
    return Bench(settings, cluster.nodes, cluster.broker_pid, started, progress=progress)


def _bus_summary(bus: dict[str, Any]) -> str:
    if "paths" not in bus:
        return "failed"
    return f"{bus['messages_per_s']:,.0f} messages/s through the broker, {bus['lost']:,} lost"


async def _w3(
    settings: Settings,
    results: dict[str, dict[str, Any]],
    name: str,
    size: int,
    progress: Progress,
) -> None:
    """W3 (or W3 x10) on a fresh cluster when this run starts the cluster."""
    progress.note(f"{name}: starting a fresh cluster")
    async with (
        _cluster(settings, label=name) as cluster,
        drivers(settings.drivers) as started,
    ):
        bench = _bench(settings, cluster, started, progress)
        await _guarded(results, [name], _one(name, run_w3(bench, size, name)), progress)
        if "error" not in results[name]:
            results[name]["fresh_cluster"] = not settings.urls


async def _bus(settings: Settings, cluster: Cluster) -> dict[str, Any]:
    if cluster.broker_endpoints is None:
        return {"skipped": BUS_SKIPPED}
    async with (
        drivers(1, "roomd.bench._bus", "bus-pub") as pub,
        drivers(1, "roomd.bench._bus", "bus-sub") as sub,
    ):
        bench = Bench(settings, cluster.nodes, cluster.broker_pid, [*pub, *sub])
        return await run_bus(bench, cluster.broker_endpoints, cluster.keys)


async def _on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, received: list[int], progress: Progress
) -> None:
    """The first SIGINT or SIGTERM cancels the run; the processes are stopped on the way out."""
    async for signum in signals:
        received.append(signum)
        progress.say(f"roomd bench: {signal.Signals(signum).name}: stopping every process")
        scope.cancel()
        return


async def _guarded(
    results: dict[str, dict[str, Any]],
    names: list[str],
    work: Coroutine[Any, Any, dict[str, dict[str, Any]]],
    progress: Progress,
) -> None:
    """Run a workload group; a failure becomes the result of its workloads, and the run goes
    on with the next group."""
    try:
        results.update(await work)
    except BenchError as exc:
        progress.say(f"roomd bench: {exc}")
        for name in names:
            results.setdefault(name, {"error": str(exc).splitlines()[0]})


async def _one(name: str, work: Awaitable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: await work}


def _revision() -> str | None:
    """The git commit of the code under test (``+dirty`` with local changes), if known."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _raise_fd_limit() -> None:
    """The nodes inherit this process's limit: W3 needs thousands of sockets per node."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str]) -> int:
    settings, json_path, repeat = parse_settings(argv)
    _raise_fd_limit()
    command = "roomd bench " + shlex.join(argv)
    documents: list[dict[str, Any]] = []
    for index in range(repeat):
        if repeat > 1:
            _say(f"run {index + 1} of {repeat}")
        failures: list[BenchError] = []
        try:
            documents.append(trio.run(run, settings, command, Progress(sys.stderr)))
        except* BenchError as group:
            failures.extend(_leaves(group))
        if failures:
            for exc in failures:
                print(f"roomd bench: {exc}", file=sys.stderr)
            return 1
        print(_report.render(documents[-1]), flush=True)
    output: dict[str, Any] = documents[0]
    if repeat > 1:
        table = _report.medians(documents)
        output = {"runs": documents, "medians": table, "scaling": _cost.scaling(table)}
        print("\n" + _report.render_medians(output["medians"], documents), flush=True)
    if settings.plots:
        written = _plots.write(settings.plots, documents, output["scaling"])
        _say(f"plots: {len(written)} SVG file(s) in {settings.plots}")
    if json_path:
        with open(json_path, "wb") as f:
            f.write(orjson.dumps(output, option=orjson.OPT_INDENT_2))
    exact = [_exact(r) for d in documents for r in d["results"].values()]
    return 0 if all(exact) else 2


def _leaves(group: BaseExceptionGroup[BenchError]) -> list[BenchError]:
    out: list[BenchError] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _exact(result: dict[str, Any]) -> bool:
    """Whether a workload lost nothing (targets aside): the exit status is 2 otherwise."""
    if "error" in result:
        return False
    if "skipped" in result or "direct_us" in result:
        return True
    if "wrong_left" in result:  # a fault workload: also no wrong presence push, no one absent
        clean = result["lost"] == 0 and result["duplicates"] == 0 and not result["timed_out"]
        wrong = result["wrong_left"] + result["wrong_joined"] + result.get("absent_at_end", 0)
        return clean and wrong == 0
    if "refused_resumes" in result:  # a session workload: also every reconnect resumed
        clean = result["lost"] == 0 and result["duplicates"] == 0 and not result["timed_out"]
        return clean and result["refused_resumes"] == 0
    if "connections" in result:
        return bool(result["all_alive"]) and result["opened"] == result["connections"]
    return result["lost"] == 0 and result["duplicates"] == 0 and not result["timed_out"]

"""Real broker and node processes on 127.0.0.1 for cluster tests."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from broker import BrokerStats, broker_stats
from roomd import Node
from roomd.io import make_keys
from tests.support import SECRET, make_config

HEARTBEAT = 0.2  # seconds: nodes notice a dead peer after 3 missed heartbeats


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@attrs.define
class Proc:
    """A child process whose output lines can be awaited."""

    name: str
    argv: list[str]
    process: trio.Process | None = None
    lines: list[str] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def start(self, nursery: trio.Nursery) -> None:
        self.lines.clear()
        self.process = await trio.lowlevel.open_process(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        nursery.start_soon(self._pump, self.process)

    async def _pump(self, process: trio.Process) -> None:
        assert process.stdout is not None
        pending = b""
        async for chunk in process.stdout:
            pending += chunk
            *done, pending = pending.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in done)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first output line from index ``start`` on matching ``pattern`` (awaits it)."""
        regex = re.compile(pattern)
        seen = start
        for _ in range(100_000):
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            await self._changed.wait()
        raise AssertionError(f"{self.name}: no line matching {pattern!r}")

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()


@attrs.define
class NodeProc(Proc):
    """A node process with its own environment."""

    env: dict[str, str] = attrs.field(factory=dict)

    async def start(self, nursery: trio.Nursery) -> None:
        self.lines.clear()
        self.process = await trio.lowlevel.open_process(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env
        )
        nursery.start_soon(self._pump, self.process)


class TcpRelay:
    """A TCP relay on 127.0.0.1 that keeps every byte it carries: what a bus connection looks
    like on the wire. Run it with ``await nursery.start(relay.run)`` (started: its port)."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.seen = bytearray()  # both directions, as they came
        self.connections = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(port)
            await trio.serve_listeners(self._serve, listeners, handler_nursery=nursery)

    async def _serve(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                self.seen += chunk
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


@attrs.define
class ClusterHandle:
    mode: str
    config_path: Path
    ports: dict[str, int]
    nodes: dict[str, Proc]
    broker: Proc | None
    nursery: trio.Nursery
    relays: list[TcpRelay] = attrs.field(factory=list)  # between the nodes and the broker
    control: str | None = None  # the (first) broker's control endpoint
    brokers: dict[str, Proc] = attrs.field(factory=dict)

    async def broker_stats(self) -> BrokerStats:
        assert self.control is not None
        return await trio.to_thread.run_sync(broker_stats, self.control, 2.0)

    def node(self, name: str) -> Node:
        """A Node object that only carries the address of process ``name`` (for connect())."""
        n = Node(make_config(node={"port": self.ports[name]}))
        n.port = self.ports[name]
        return n

    async def start_node(self, name: str, expect_peers: int) -> None:
        proc = self.nodes[name]
        await proc.start(self.nursery)
        await proc.wait_for("cluster ready")
        await wait_peers(proc, expect_peers)

    async def restart_broker(self, name: str | None = None) -> None:
        broker = self.brokers[name] if name is not None else self.broker
        assert broker is not None
        await broker.start(self.nursery)
        await broker.wait_for(r'^\{"frontend"')


async def wait_peers(proc: Proc, count: int, start: int = 0) -> None:
    """Until ``proc`` logged ``count`` distinct peers as up (from line ``start`` on)."""
    await distinct_matches(proc, r"node (\S+) is up", count, start)


async def distinct_matches(proc: Proc, pattern: str, count: int, start: int = 0) -> set[str]:
    """Until ``proc`` logged lines matching ``pattern`` with ``count`` distinct values of its
    first group (from line ``start`` on); those values."""
    seen: set[str] = set()
    index = start
    for _ in range(1000):
        if len(seen) >= count:
            return seen
        match = await proc.wait_for(pattern, index)
        seen.add(match.group(1))
        index = proc.lines.index(match.string, index) + 1
    raise AssertionError(f"{proc.name}: {pattern!r}")


def cluster_keys(directory: Path, names: list[str]) -> Path:
    """A key directory with a CurveZMQ keypair for each of ``names`` (nodes and brokers)."""
    make_keys(directory, names)
    return directory


def write_config(
    path: Path,
    mode: str,
    names: list[str],
    ports: dict[str, int],
    bus: dict[str, int],
    broker: tuple[int, int],
    keys: Path | None = None,
    brokers: dict[str, tuple[int, int]] | None = None,
    sharded: bool = False,
) -> None:
    """A cluster file; with ``keys`` (a directory made by :func:`cluster_keys`) the bus is
    CurveZMQ, without it ``cluster.insecure``. ``brokers`` (name: its two ports) lists
    several brokers instead of ``broker``: replicas, or (``sharded``) one shard each."""
    security = [f'keys = "{keys}"'] if keys is not None else ["insecure = true"]
    lines = [
        "[auth]",
        "dev = true",
        f'secret = "{SECRET}"',
        "[permissions]",
        'client_send = ["room", "user", "users", "all"]',
        "[shutdown]",
        "drain_period = 0.5",
        "move_timeout = 3.0",
        "drain_timeout = 10.0",
        "[cluster]",
        f'mode = "{mode}"',
        f'broker_frontend = "tcp://127.0.0.1:{broker[0]}"',
        f'broker_backend = "tcp://127.0.0.1:{broker[1]}"',
        *security,
        f"heartbeat_interval = {HEARTBEAT}",
        "heartbeat_misses = 3",
        "snapshot_retry = 0.3",
        "call_timeout = 1.0",
    ]
    for shard, (name, (front, back)) in enumerate((brokers or {}).items()):
        lines += ["[[cluster.brokers]]", f'name = "{name}"', f"shard = {shard if sharded else 0}"]
        lines += [f'frontend = "tcp://127.0.0.1:{front}"', f'backend = "tcp://127.0.0.1:{back}"']
    for name in names:
        lines += ["[[cluster.nodes]]", f'name = "{name}"', f"port = {ports[name]}"]
        lines.append(f'bus = "tcp://127.0.0.1:{bus[name]}"')
    path.write_text("\n".join(lines) + "\n")


def broker_proc(
    name: str,
    front: int,
    back: int,
    control: str | None,
    keys: Path | None,
    host: str = "127.0.0.1",
) -> Proc:
    """A ``python -m broker`` process (CurveZMQ with the key directory ``keys``)."""
    argv = [sys.executable, "-m", "broker", "--name", name, "--stats-interval", "0"]
    argv += ["--frontend", f"tcp://{host}:{front}", "--backend", f"tcp://{host}:{back}"]
    argv += ["--control", control] if control else []
    argv += ["--keys", str(keys)] if keys is not None else ["--insecure"]
    return Proc(name, argv)


@asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    mode: str = "broker",
    count: int = 3,
    secure: bool = True,
    relayed: bool = False,
    brokers: int = 1,
    sharded: bool = False,
) -> AsyncIterator[ClusterHandle]:
    """A broker (in broker mode) and ``count`` nodes, CurveZMQ unless not ``secure``. With
    ``relayed`` the nodes reach the broker through :class:`TcpRelay` s (``handle.relays``).
    With ``brokers`` > 1, that many brokers ``b1``, ``b2`` ... (``handle.brokers``), the
    first with the control endpoint: replicas, or (``sharded``) one shard each."""
    names = [f"node{chr(ord('A') + i)}" for i in range(count)]
    ports_list = free_ports(2 * count + 1 + 2 * brokers)
    ports = dict(zip(names, ports_list[:count], strict=True))
    bus = dict(zip(names, ports_list[count : 2 * count], strict=True))
    control = f"tcp://127.0.0.1:{ports_list[2 * count]}"
    broker_names = ["broker"] if brokers == 1 else [f"b{i + 1}" for i in range(brokers)]
    pairs = ports_list[2 * count + 1 :]
    broker_ports = {n: (pairs[2 * i], pairs[2 * i + 1]) for i, n in enumerate(broker_names)}
    path = tmp_path / f"{mode}.toml"
    keys = cluster_keys(tmp_path / "keys", [*broker_names, *names]) if secure else None
    first = broker_ports[broker_names[0]]
    relays = [TcpRelay(("127.0.0.1", port)) for port in first] if relayed else []
    env_python = sys.executable
    broker_procs: dict[str, Proc] = {}
    if mode == "broker":
        for i, (name, (front, back)) in enumerate(broker_ports.items()):
            broker_procs[name] = broker_proc(name, front, back, control if i == 0 else None, keys)
    nodes = {
        name: Proc(
            name,
            [
                env_python,
                "-m",
                "roomd.cli",
                "--name",
                name,
                "--config",
                str(path),
                "--log-level",
                "DEBUG",
            ],
        )
        for name in names
    }
    async with trio.open_nursery() as nursery:
        advertised = first
        if relays:
            front, back = [await nursery.start(relay.run) for relay in relays]
            advertised = (front, back)
        listed = broker_ports if brokers > 1 else None
        write_config(path, mode, names, ports, bus, advertised, keys, listed, sharded)
        broker = broker_procs.get(broker_names[0])
        handle = ClusterHandle(
            mode, path, ports, nodes, broker, nursery, relays, control, broker_procs
        )
        try:
            for name in broker_procs:
                await handle.restart_broker(name)
            for proc in nodes.values():
                await proc.start(nursery)
            for proc in nodes.values():
                await proc.wait_for("cluster ready")
                await wait_peers(proc, count - 1)
            yield handle
        finally:
            with trio.CancelScope(shield=True):
                for proc in [*nodes.values(), *broker_procs.values()]:
                    proc.kill()
                    if proc.process is not None:
                        await proc.process.wait()
            nursery.cancel_scope.cancel()


def metrics(port: int) -> dict[str, float]:
    """GET /metrics synchronously: the samples by name (with labels)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def health(port: int) -> dict[str, Any]:
    """GET /health synchronously (tests call it through trio.to_thread)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data

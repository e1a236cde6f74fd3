"""The processes of a benchmark: a local cluster (broker and nodes), the drivers, /proc readings.

Resource handling: :func:`local_cluster` and :func:`drivers` are async context managers that
stop every process they started when they exit, however they exit (an error, Ctrl-C): SIGTERM,
then SIGKILL after :data:`STOP_GRACE` seconds. The children run in sessions of their own, so a
Ctrl-C reaches only the orchestrator. (``PR_SET_PDEATHSIG`` is not used: Trio starts processes
from a worker thread, and the signal would fire when that thread ends, not the orchestrator.)
A driver also exits when its stdin closes.

Error handling: :class:`BenchError` when a process does not start, does not become ready in
time, exits early, or a driver answers with an error; its message carries the process's last
output lines.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import attrs
import orjson
import trio

from .._config import load_config
from .._launcher import ensure_keys, plan, stop_processes

STOP_GRACE: Final = 5.0
KEEP_LINES: Final = 10_000  # output lines kept per process
TAIL_LINES: Final = 60  # shown when a process fails
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on (a process failed, a step timed out)."""


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with ``openssl`` in ``directory``."""
    cert, key = directory / "node.pem", directory / "node.key"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"cannot make a certificate with openssl: {exc}") from None
    return cert, key


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# /proc -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` so far, all its threads, those that
    ended included (``None`` if it is gone).

    Read from the process's CPU-time clock (Linux's ``CPUCLOCK_SCHED`` clock of another
    process, ``((~pid) << 3) | 2``: nanoseconds, the clock ``clock_getcpuclockid`` gives),
    so that a short phase's few milliseconds are measured; ``/proc/PID/stat`` counts in clock
    ticks (10 ms) and is the fallback where that clock cannot be read."""
    with suppress(OSError, OverflowError):
        return time.clock_gettime(((~pid) << 3) | 2)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def rss_bytes(pid: int) -> int | None:
    """The resident set size of process ``pid`` (``VmRSS``), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# Child processes -------------------------------------------------------------------------------


@attrs.define(eq=False)
class Child:
    """A child process whose output lines are kept (the last ones) and can be awaited."""

    name: str
    argv: list[str]
    process: trio.Process | None = None
    tail: collections.deque[str] = attrs.field(factory=lambda: collections.deque(maxlen=KEEP_LINES))
    count: int = 0  # lines seen so far
    _changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, nursery: trio.Nursery) -> None:
        self.process = await trio.lowlevel.open_process(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches only the orchestrator, which stops us
        )
        nursery.start_soon(self._pump, self.process)

    async def _pump(self, process: trio.Process) -> None:
        assert process.stdout is not None
        pending = b""
        async for chunk in process.stdout:
            pending += chunk
            *done, pending = pending.split(b"\n")
            for line in done:
                self.tail.append(line.decode(errors="replace"))
                self.count += 1
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    async def wait_for(
        self, pattern: str, seen: set[str] | None = None, since: int = 0
    ) -> re.Match[str]:
        """The next line matching ``pattern`` (from line ``since`` on, counted from the
        process's first line: lines are kept in the tail) whose first group is not in
        ``seen``. Bound it with a cancel scope."""
        regex = re.compile(pattern)
        while True:
            skip = max(0, since - (self.count - len(self.tail)))
            for line in list(self.tail)[skip:]:
                match = regex.search(line)
                if match and (seen is None or match.group(1) not in seen):
                    return match
            if self.process is not None and self.process.returncode is not None:
                status = self.process.returncode
                raise BenchError(f"{self.name} exited with status {status}:\n{self.output()}")
            with trio.move_on_after(0.5):
                await self._changed.wait()

    def output(self) -> str:
        lines = list(self.tail)[-TAIL_LINES:]
        return "\n".join(f"  {self.name} | {line}" for line in lines)


async def stop_all(children: Sequence[Child]) -> None:
    """SIGTERM every running child, SIGKILL those still running after the grace; wait. (A
    stopped child, which a fault workload froze, is woken first: it could not handle the
    SIGTERM.)"""
    for child in children:
        if child.process is not None and child.process.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGCONT)
    await stop_processes(children, STOP_GRACE)


# The local cluster ------------------------------------------------------------------------------


@attrs.frozen
class Node:
    """A node to connect to, and its process when this benchmark started it."""

    name: str
    host: str
    port: int
    pid: int | None = None
    tls: bool = False  # it serves wss:// and https://


@attrs.define(eq=False)
class ClusterControl:
    """The processes of a cluster this benchmark started, for the fault workloads: signal
    them, wait for one to exit, start one again."""

    children: dict[str, Child]  # "broker", then the nodes by name
    nursery: trio.Nursery

    def pid(self, name: str) -> int | None:
        process = self.children[name].process
        return None if process is None or process.returncode is not None else process.pid

    def signal(self, name: str, signum: int) -> None:
        pid = self.pid(name)
        if pid is None:
            raise BenchError(f"{name} is not running")
        os.kill(pid, signum)

    async def wait_exit(self, name: str) -> int:
        """Until ``name`` has exited; its exit status."""
        process = self.children[name].process
        assert process is not None
        return await process.wait()

    async def restart(self, name: str, peers: int = 0) -> None:
        """Start ``name`` again (it must have exited) and wait until it serves: the broker
        once it printed its endpoints, a node once it is ready and saw ``peers`` others."""
        child = self.children[name]
        since = child.count
        await child.start(self.nursery)
        if name == "broker":
            await child.wait_for(r'^(\{"frontend")', since=since)
            return
        await child.wait_for(r"(cluster ready)", since=since)
        seen: set[str] = set()
        while len(seen) < peers:
            seen.add((await child.wait_for(r"node (\S+) is up", seen, since)).group(1))


@attrs.frozen
class Cluster:
    nodes: list[Node]
    broker_pid: int | None = None
    broker_endpoints: tuple[str, str] | None = None  # frontend, backend (when started here)
    control: ClusterControl | None = None  # when started here
    keys: str | None = None  # the key directory of its CurveZMQ bus (None: insecure)


@attrs.frozen
class ClusterOptions:
    """How the benchmark's nodes are set up beyond the defaults."""

    compress_threshold: int | None = None  # compression.threshold
    tls: bool = False  # serve TLS with a certificate made for the run
    # cluster.heartbeat_interval: 1 s for the load workloads; None: the node's default (the
    # session and fault workloads measure what the defaults give)
    heartbeat: float | None = 1.0
    drain_period: float | None = None  # shutdown.drain_period (None: the node's default)
    insecure: bool = False  # a plaintext bus (cluster.insecure) instead of CurveZMQ
    mesh: bool = False  # a mesh (each node's PUB bound on its own port) instead of a broker


def cluster_toml(
    names: Sequence[str],
    ports: Sequence[int],
    broker: tuple[int, int],
    options: ClusterOptions = ClusterOptions(),
    tls: tuple[Path, Path] | None = None,
    keys: Path | None = None,
    buses: Sequence[int] = (),
) -> str:
    """The cluster file of a benchmark: dev auth, limits out of the workloads' way; a broker
    on the ports ``broker``, or with ``options.mesh`` each node's PUB on its port of
    ``buses``."""
    frontend, backend = (f"tcp://127.0.0.1:{p}" for p in broker)
    lines = [
        "# Written by `roomd bench`: nodes (and, unless a mesh, a broker) on 127.0.0.1.",
        "[auth]",
        "dev = true",
        "[limits]",
        "max_connections = 100000",
        "max_handshakes = 100000",
        "max_connections_per_ip = 0  # every connection comes from 127.0.0.1",
        "rate = 1000000.0  # frames/s per connection: a burst sender must not be throttled",
        "burst = 1000000",
        "[permissions]",
        'client_send = ["room", "user", "users"]',
    ]
    if options.mesh:
        lines += ["[cluster]", 'mode = "mesh"']
    else:
        lines += ["[broker]", f'frontend = "{frontend}"', f'backend = "{backend}"']
        lines += ["stats_interval = 0", "[cluster]", 'mode = "broker"']
        lines += [f'broker_frontend = "{frontend}"', f'broker_backend = "{backend}"']
    lines.append("insecure = true" if options.insecure or keys is None else f'keys = "{keys}"')
    if options.heartbeat is not None:
        lines += [f"heartbeat_interval = {options.heartbeat}", "heartbeat_misses = 3"]
    if options.drain_period is not None:
        lines += ["[shutdown]", f"drain_period = {options.drain_period}"]
    if options.compress_threshold is not None:
        lines += ["[compression]", f"threshold = {options.compress_threshold}"]
    if tls is not None:
        lines += ["[tls]", f'cert = "{tls[0]}"', f'key = "{tls[1]}"']
    for i, (name, port) in enumerate(zip(names, ports, strict=True)):
        lines += ["[[cluster.nodes]]", f'name = "{name}"', f"port = {port}"]
        if options.mesh:
            lines.append(f'bus = "tcp://127.0.0.1:{buses[i]}"')
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def local_cluster(
    count: int,
    start_timeout: float,
    logs: str | None = None,
    options: ClusterOptions = ClusterOptions(),
) -> AsyncIterator[Cluster]:
    """Start a broker (none with ``options.mesh``) and ``count`` nodes and wait until every
    node sees all the others; write each one's output (its last lines) to ``logs/<name>.log``
    at the end."""
    names = [f"node{i + 1}" for i in range(count)]
    # the nodes', the broker's two, and in a mesh each node's bus
    ports = free_ports(count + 2 + (count if options.mesh else 0))
    with tempfile.TemporaryDirectory(prefix="roomd-bench-") as tmp:
        path = Path(tmp) / "cluster.toml"
        tls = self_signed(Path(tmp)) if options.tls else None
        keys = None if options.insecure else Path(tmp) / "keys"
        broker_ports = (ports[count], ports[count + 1])
        endpoints = (f"tcp://127.0.0.1:{broker_ports[0]}", f"tcp://127.0.0.1:{broker_ports[1]}")
        buses = ports[count + 2 :]
        toml = cluster_toml(names, ports[:count], broker_ports, options, tls, keys, buses)
        path.write_text(toml)
        config = load_config(path)
        ensure_keys(config)
        planned = plan(config, path, ["--log-level", "INFO"])
        brokers = [Child(c.name, c.argv) for c in planned if c.stop_last]
        nodes = [Child(c.name, c.argv) for c in planned if not c.stop_last]
        children = [*brokers, *nodes]
        async with trio.open_nursery() as nursery:
            try:
                with trio.move_on_after(start_timeout) as scope:
                    await _start(brokers, nodes, nursery)
                if scope.cancelled_caught:
                    raise BenchError(
                        f"the cluster was not ready within {start_timeout:g} s:\n"
                        + "\n".join(c.output() for c in children)
                    )
                try:
                    yield Cluster(
                        [
                            Node(c.name, "127.0.0.1", port, c.pid, options.tls)
                            for c, port in zip(nodes, ports, strict=False)
                        ],
                        brokers[0].pid if brokers else None,
                        endpoints if brokers else None,
                        ClusterControl({c.name: c for c in children}, nursery),
                        str(keys) if keys is not None else None,
                    )
                except BenchError as exc:
                    dead = [c for c in children if c.process and c.process.returncode is not None]
                    if not dead:
                        raise
                    outputs = "\n".join(
                        f"{c.name} exited with status {c.process.returncode}:\n{c.output()}"
                        for c in dead
                        if c.process is not None
                    )
                    raise BenchError(f"{exc}\n{outputs}") from None
            finally:
                with trio.CancelScope(shield=True):
                    await stop_all(nodes)  # nodes first: they say goodbye on the bus
                    await stop_all(brokers)
                    if logs is not None:
                        await _save_logs(Path(logs), children)
                nursery.cancel_scope.cancel()


async def _save_logs(directory: Path, children: list[Child]) -> None:
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    for child in children:
        text = "\n".join(child.tail) + "\n"
        await trio.Path(directory / f"{child.name}.log").write_text(text)


async def _start(brokers: list[Child], nodes: list[Child], nursery: trio.Nursery) -> None:
    for broker in brokers:
        await broker.start(nursery)
        await broker.wait_for(r'^(\{"frontend")')
    for node in nodes:
        await node.start(nursery)
    for node in nodes:
        await node.wait_for(r"(cluster ready)")
        peers: set[str] = set()
        while len(peers) < len(nodes) - 1:
            peers.add((await node.wait_for(r"node (\S+) is up", peers)).group(1))


# Drivers ---------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Driver:
    """A driver process, spoken to with one JSON line each way per command."""

    name: str
    process: trio.Process
    _buffer: bytearray = attrs.field(factory=bytearray)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``command``; its answer. Error handling: :class:`BenchError` if the driver
        answers with an error, exits, or does not answer within ``timeout`` seconds."""
        assert self.process.stdin is not None and self.process.stdout is not None
        with trio.move_on_after(timeout) as scope:
            await self.process.stdin.send_all(orjson.dumps(command) + b"\n")
            while (end := self._buffer.find(b"\n")) < 0:
                chunk = await self.process.stdout.receive_some(1 << 20)
                if not chunk:
                    raise BenchError(f"{self.name} exited during {command['cmd']!r}")
                self._buffer += chunk
        if scope.cancelled_caught:
            raise BenchError(f"{self.name}: no answer to {command['cmd']!r} in {timeout:g} s")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        reply: dict[str, Any] = orjson.loads(line)
        if "error" in reply and isinstance(reply["error"], str):
            raise BenchError(f"{self.name}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply


@asynccontextmanager
async def drivers(
    count: int, module: str = "roomd.bench._driver", name: str = "driver"
) -> AsyncIterator[list[Driver]]:
    """Start ``count`` processes of ``module`` (the WebSocket driver, or ``roomd.bench._bus``)
    that speak the driver's protocol; stop them on exit."""
    started: list[Driver] = []
    try:
        for i in range(count):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", module],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            started.append(Driver(f"{name}{i + 1}", process))
        yield started
    finally:
        with trio.CancelScope(shield=True):
            for driver in started:
                if driver.process.stdin is not None:
                    with trio.move_on_after(1.0):
                        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                            await driver.process.stdin.send_all(b'{"cmd":"quit"}\n')
            with trio.move_on_after(STOP_GRACE):
                for driver in started:
                    await driver.process.wait()
            for driver in started:
                if driver.process.returncode is None:
                    driver.process.kill()
                    await driver.process.wait()


# HTTP ------------------------------------------------------------------------------------------


async def get_json(node: Node, path: str, timeout: float = 5.0, method: str = "GET") -> Any:
    """``GET path`` (or another ``method``, without a body) over HTTP/1.0 (over TLS if the
    node serves it, without checking its certificate: the benchmark's own); the JSON body of
    a 200 or 202 answer. Error handling: :class:`BenchError`."""
    host, port = node.host, node.port
    try:
        with trio.fail_after(timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            if node.tls:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                stream = trio.SSLStream(stream, context, https_compatible=True)
            async with stream:
                request = f"{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0"
                await stream.send_all(request.encode() + b"\r\n\r\n")
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise BenchError(f"{method} http://{host}:{port}{path}: {exc!r}") from None
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] not in (b"200", b"202"):
        raise BenchError(f"{method} http://{host}:{port}{path}: {head[:80]!r}")
    return orjson.loads(body)

"""`roomd cluster`: run a broker and every node of a cluster file in one terminal.

Each process's output is shown line by line behind its name. The children run in their own
sessions, so a Ctrl-C reaches only the launcher, which stops them all with one SIGTERM each
(a graceful shutdown) and kills those still running after a grace period.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

import attrs
import trio

from ._config import Config, key_directory
from .io import make_keys, public_key_path, secret_key_path

log = logging.getLogger("roomd.launcher")

STOP_GRACE: Final = 10.0  # seconds between SIGTERM and SIGKILL
_COLORS: Final = (36, 33, 32, 35, 34, 31, 96, 93)


@attrs.define
class Child:
    name: str
    argv: list[str]
    stop_last: bool = False  # the broker: stopped once the nodes are gone (their goodbyes)
    process: trio.Process | None = None


def ensure_keys(config: Config) -> list[str]:
    """Make the CurveZMQ keys a local cluster needs and lacks (every broker's and node's, in
    the key directory); the names they were made for. Nothing with ``cluster.insecure``.

    Error handling: :exc:`ValueError` for a name whose public key is there without its
    secret key (it belongs to a process elsewhere); :exc:`OSError` as the file system says.
    """
    section = config.cluster
    if section.insecure or section.mode == "none":
        return []
    directory = key_directory(config)
    names = [entry.name for entry in section.nodes]
    if section.mode == "broker":
        names = [broker.name for broker in section.broker_list()] + names
    missing = []
    for name in names:
        if secret_key_path(directory, name).exists():
            continue
        if public_key_path(directory, name).exists():
            raise ValueError(
                f"{public_key_path(directory, name)} has no secret key beside it: a local "
                f"cluster runs {name} here (roomd keys {name} --force replaces it)"
            )
        missing.append(name)
    if missing:
        make_keys(directory, missing)
    return missing


def plan(config: Config, config_path: str | Path, node_args: Sequence[str] = ()) -> list[Child]:
    """The processes a cluster file describes: the brokers (in broker mode), then each node."""
    python = sys.executable
    children = []
    section = config.cluster
    if section.mode == "broker":
        security = ["--insecure"] if section.insecure else ["--keys", str(key_directory(config))]
        for broker in section.broker_list():
            argv = [python, "-m", "broker", "--config", str(config_path), *security]
            if section.brokers:  # each broker of the list binds its own endpoints
                frontend = broker.frontend_bind or broker.frontend
                backend = broker.backend_bind or broker.backend
                argv += ["--name", broker.name, "--frontend", frontend, "--backend", backend]
                argv += ["--control", ""]
            children.append(Child(broker.name, argv, stop_last=True))
    for entry in config.cluster.nodes:
        argv = [python, "-m", "roomd.cli", "--name", entry.name, "--config", str(config_path)]
        children.append(Child(entry.name, [*argv, *node_args]))
    return children


async def run_children(children: list[Child], color: bool = True) -> int:
    """Run ``children`` until a signal, or until they have all exited; the exit status."""
    width = max(len(c.name) for c in children)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for i, child in enumerate(children):
                prefix = child.name.ljust(width) + " | "
                if color:
                    prefix = f"\x1b[{_COLORS[i % len(_COLORS)]}m{prefix}\x1b[0m"
                child.process = await trio.lowlevel.open_process(
                    child.argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                nursery.start_soon(_pump, child, prefix)
            watcher = trio.CancelScope()
            nursery.start_soon(_on_signal, signals, children, watcher)
            for child in children:
                assert child.process is not None
                code = await child.process.wait()
                print(f"{child.name} exited with status {code}", flush=True)
            watcher.cancel()
    codes = [c.process.returncode for c in children if c.process is not None]
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


async def _pump(child: Child, prefix: str) -> None:
    assert child.process is not None and child.process.stdout is not None
    pending = b""
    async for chunk in child.process.stdout:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            print(prefix + line.decode(errors="replace"), flush=True)
    if pending:
        print(prefix + pending.decode(errors="replace"), flush=True)


async def _on_signal(
    signals: AsyncIterator[int], children: list[Child], scope: trio.CancelScope
) -> None:
    """On the first signal stop the nodes (SIGTERM), then the broker, so that the nodes'
    goodbyes still travel; kill what is still running ``STOP_GRACE`` seconds after its SIGTERM."""
    with scope:
        async for signum in signals:
            print(f"{signal.Signals(signum).name}: stopping every process", flush=True)
            break
        for last in (False, True):
            group = [c for c in children if c.stop_last is last]
            await stop_processes(group, STOP_GRACE, on_kill=_say_killed)


def _say_killed(name: str) -> None:
    print(f"{name} did not stop: killing it", flush=True)


class Stoppable(Protocol):
    name: str
    process: trio.Process | None


async def stop_processes(
    children: Sequence[Stoppable], grace: float, on_kill: Callable[[str], None] | None = None
) -> None:
    """SIGTERM every child still running, wait ``grace`` seconds at most, then SIGKILL (and
    reap) those still running."""
    running = [c for c in children if c.process is not None and c.process.returncode is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace):
        for child in running:
            assert child.process is not None
            await child.process.wait()
    for child in running:
        assert child.process is not None
        if child.process.returncode is None:
            if on_kill is not None:
                on_kill(child.name)
            child.process.kill()
            await child.process.wait()

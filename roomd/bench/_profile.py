"""Optional profiles of the nodes while a phase runs (``roomd bench --profile DIR``).

For each measured phase, one ``py-spy record --format raw`` per node process samples the
node's Python stacks (not the idle ones: a node waiting in epoll is not sampled) and writes the
collapsed stacks to ``DIR/<phase>-<node>.txt``. :func:`top_functions` reads such files and
ranks functions by self time (the innermost frame of a sample) and by inclusive time (anywhere
in the stack), which is what the report prints.

Resource handling: :func:`profiling` stops every py-spy it started (SIGINT, so that it writes
its file; SIGKILL after a grace) when it exits.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from ._procs import BenchError

RATE: Final = 200  # samples per second
ATTACH: Final = 0.5  # seconds for py-spy to attach before the phase starts


def py_spy() -> str | None:
    """The py-spy executable (next to this Python, else on PATH), or ``None``."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@asynccontextmanager
async def profiling(directory: Path, label: str, pids: dict[str, int]) -> AsyncIterator[None]:
    """Record every process of ``pids`` while the block runs."""
    exe = py_spy()
    if exe is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    await trio.Path(directory).mkdir(parents=True, exist_ok=True)
    procs: list[trio.Process] = []
    try:
        for name, pid in pids.items():
            out = directory / f"{label}-{name}.txt"
            argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--nolineno"]
            argv += ["--rate", str(RATE), "--nonblocking", "--output", str(out)]
            procs.append(
                await trio.lowlevel.open_process(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        await trio.sleep(ATTACH)
        yield
    finally:
        with trio.CancelScope(shield=True):
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGINT)
            with trio.move_on_after(10):
                for proc in procs:
                    await proc.wait()
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """``frame;frame;...;frame count`` lines (outermost frame first) as ``(frames, count)``."""
    out = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def top_functions(stacks: Iterable[tuple[list[str], int]], limit: int = 10) -> dict[str, Any]:
    """The functions with the most samples: ``{"samples": n, "self": [...], "inclusive":
    [...]}``, each list of ``(function, percent of all samples)``, largest first."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in stacks:
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def ranked(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(limit)]

    return {"samples": total, "self": ranked(own), "inclusive": ranked(anywhere)}


def summarize(directory: Path, label: str, limit: int = 10) -> dict[str, Any]:
    """:func:`top_functions` over every node file of one phase."""
    stacks: list[tuple[list[str], int]] = []
    for path in sorted(directory.glob(f"{label}-node*.txt")):
        with path.open() as f:
            stacks += parse_collapsed(f)
    return top_functions(stacks, limit)

"""What Trio's primitives cost on this machine (part of ``micro``): the reasons the node uses
them once per wake-up rather than once per connection or message (docs/performance.md, "What
Trio costs").

Each figure is microseconds per operation, the best of three rounds, in one process:

* ``trio_checkpoint_us``: ``trio.lowlevel.checkpoint()``, a pass of the scheduler;
* ``trio_task_us``: ``nursery.start_soon`` and the task run to completion;
* ``trio_nursery_us``: opening and closing a nursery;
* ``trio_scope_us``: a cancel scope with a deadline, entered and left;
* ``trio_event_wake_us``: one task woken by another through a ``trio.Event`` (two tasks taking
  turns; per wake-up);
* ``trio_wait_readable_us``: ``trio.lowlevel.wait_readable`` on a socket already readable, per
  socket, over 100 of them (Trio re-arms each with an ``epoll_ctl`` per wait);
* ``epoll_ready_us``: the same readiness read from a level-triggered epoll set in which the
  100 sockets are registered once (what the node's reading task does), per socket.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Awaitable, Callable

import trio

_SOCKETS = 100


async def _best(run: Callable[[int], Awaitable[None]], count: int, per: int = 1) -> float:
    """Microseconds per operation of ``run(count)`` (``count * per`` operations), best of 3."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        await run(count)
        best = min(best, (time.perf_counter() - start) / (count * per))
    return round(best * 1e6, 3)


async def _checkpoints(count: int) -> None:
    for _ in range(count):
        await trio.lowlevel.checkpoint()


async def _tasks(count: int) -> None:
    async def nothing() -> None:
        pass

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(nothing)
            if i % 100 == 99:
                await trio.lowlevel.checkpoint()


async def _nurseries(count: int) -> None:
    for _ in range(count):
        async with trio.open_nursery():
            pass


async def _scopes(count: int) -> None:
    for _ in range(count):
        with trio.move_on_after(10):  # noqa: ASYNC100 (the scope's own cost is what is measured)
            pass


async def _wake_ups(count: int) -> None:
    """``count`` rounds of two wake-ups: this task wakes the other, the other wakes it."""
    events = {"ping": trio.Event(), "pong": trio.Event()}

    async def other() -> None:
        for _ in range(count):
            await events["ping"].wait()
            events["ping"] = trio.Event()
            events["pong"].set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(count):
            events["ping"].set()
            await events["pong"].wait()
            events["pong"] = trio.Event()


def _readable_pairs() -> list[tuple[socket.socket, socket.socket]]:
    pairs = []
    for _ in range(_SOCKETS):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.send(b"x")  # readable, and stays so: nothing reads it
        pairs.append((ours, theirs))
    return pairs


async def _wait_readable(rounds: int) -> None:
    pairs = _readable_pairs()
    try:
        for _ in range(rounds):
            for ours, _theirs in pairs:
                await trio.lowlevel.wait_readable(ours)
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


async def _epoll_ready(rounds: int) -> None:
    pairs = _readable_pairs()
    epoll = select.epoll()
    try:
        for ours, _theirs in pairs:
            epoll.register(ours.fileno(), select.EPOLLIN)
        for _ in range(rounds):
            epoll.poll(0, 2 * _SOCKETS)
    finally:
        epoll.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


async def _measure(count: int) -> dict[str, float]:
    rounds = max(1, count // _SOCKETS)
    return {
        "trio_checkpoint_us": await _best(_checkpoints, count),
        "trio_task_us": await _best(_tasks, count),
        "trio_nursery_us": await _best(_nurseries, count),
        "trio_scope_us": await _best(_scopes, count),
        "trio_event_wake_us": await _best(_wake_ups, count, per=2),
        "trio_wait_readable_us": await _best(_wait_readable, rounds, per=_SOCKETS),
        "epoll_ready_us": await _best(_epoll_ready, rounds, per=_SOCKETS),
    }


def measure_trio(count: int = 20_000) -> dict[str, float]:
    """Microseconds per use of each Trio primitive, and of the epoll set the node uses."""
    return trio.run(_measure, count)

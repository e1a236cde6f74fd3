"""The ``bus`` workload's processes: ``python -m roomd.bench._bus``.

The raw bus, without nodes in the path: a PUB in one process and a SUB in another, opened with
:mod:`roomd.io._zmq` as a node's bus opens them, either through the benchmark's broker (PUB to
its frontend, SUB to its backend) or directly (the PUB bound, the SUB connected to it, as in a
mesh). Two processes, as two nodes: each end has its own Trio thread and ZeroMQ I/O thread,
and neither end's cost slows the other one down. Like the driver, a process reads one JSON
command per line on stdin and answers with one JSON line on stdout; the orchestrator
(:func:`._workloads.run_bus`) drives both. Commands:

Publisher side:

``pub``      build the messages (``messages``, ``bytes``), open the PUB (``path``: ``broker``
             connects to ``frontend``, ``direct`` binds a port) and a PULL for acknowledgements;
             answers the endpoints for the subscriber. With ``keys`` (a key directory) the PUB
             speaks CurveZMQ as a node's does, with the keypair :data:`SENDER` (made there if
             missing): to the broker (``broker.key``), or as the server of the direct path
             (its ZAP handler lets in the keys of the directory)
``probe``    publish one probe
``publish``  publish every message with ``send_nowait``, a checkpoint every ``checkpoint``
             messages, at most ``window`` of them unacknowledged (0: no limit; when the window
             is full it waits until half of it is acknowledged); answers when the first and the
             last went (it gives up when the window stays full for ``quiet`` seconds, and at
             ``timeout``)

Subscriber side:

``sub``      open the SUB (subscribed to :data:`TOPIC`, connected to ``endpoint``, with
             ``keys`` CurveZMQ to ``server_key``) and a PUSH to the publisher's ``acks``
             endpoint
``probed``   whether a probe arrived within ``wait`` seconds (a SUB misses what is published
             before its subscription reached the publisher: the slow joiner)
``arm``      read until nothing arrived for 0.1 s, then count ``messages`` in the background,
             acknowledging the count received whenever ``ack_every`` more arrived
``collect``  wait until ``sent`` messages arrived (then ``grace`` seconds more), nothing arrived
             for ``quiet`` seconds, or ``timeout``; answers the counts

Both: ``close`` closes the sockets; ``quit`` (or the end of stdin) exits.

The window is flow control a node's bus does not have: ZeroMQ drops silently at a high-water
mark (a PUB's is 20,000 messages), and a publisher that runs ahead of the path loses messages.
With a window below every high-water mark on the path nothing can be dropped, and the rate
measured is what the path carries without loss; with no window the run shows what is lost.
The acknowledgements travel on their own TCP connection, one 8-byte message per eighth of the
window received.

Each message is a ``users`` push built with :func:`roomd.cluster._wire.encode`. The subscriber
reads its sequence number at a fixed offset instead of decoding it (decoding is the node's
cost, not the bus's) and marks it in a bitmap: lost = sent - received, exactly. A command that
raises is answered with ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import attrs
import trio
import zmq

from ..cluster import _wire
from ..io import (
    Keypair,
    SocketType,
    TrustedKeys,
    ZapRequest,
    ZmqSocket,
    make_context,
    make_keys,
    open_socket,
    public_key_path,
    read_keypair,
    read_public_key,
    secret_key_path,
    serve_zap,
)
from . import _stats
from ._commands import serve_commands

TOPIC: Final = _wire.node_topic("bench-bus")  # no node subscribes to it
SENDER: Final = "bench-bus"
EPOCH: Final = 0x5EED_0B05_5EED  # nodes draw theirs at random; any fixed value will do
PROBE: Final = TOPIC + b"probe"
RECEIVE_BATCH: Final = 1024  # as a node's bus
SETTLE_QUIET: Final = 0.1  # arm: read until nothing arrived for this long ...
SETTLE_MAX: Final = 2.0  # ... for at most this long
_UINT_WIDTHS: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}  # msgpack uint 8/16/32/64


@attrs.frozen
class Messages:
    """The messages of a run, and what each of them starts with up to its sequence number."""

    messages: list[bytes]
    prefix: bytes

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.messages)) / len(self.messages) if self.messages else 0.0


def build(count: int, size: int) -> Messages:
    """``count`` ``users`` pushes to :data:`TOPIC`, numbered 0 .. count-1, each about ``size``
    bytes after the topic (give or take the width of its sequence number)."""

    def one(seq: int, padding: int) -> bytes:
        body = b'"event":"bench","data":"' + b"x" * padding + b'","from":"bench"}'
        return _wire.encode(TOPIC, _wire.Kind.USERS, SENDER, EPOCH, seq, [body, False, ["u1"]])

    padding = max(0, size - (len(one(0, 0)) - len(TOPIC)))
    first, second = one(0, padding), one(1, padding)
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    return Messages([one(seq, padding) for seq in range(count)], first[:common])


def seq_at(message: bytes, offset: int) -> int:
    """The msgpack unsigned integer at ``offset`` of ``message`` (its sequence number), or -1."""
    if offset >= len(message):
        return -1
    head = message[offset]
    if head < 0x80:
        return head
    width = _UINT_WIDTHS.get(head)
    if width is None or offset + 1 + width > len(message):
        return -1
    return int.from_bytes(message[offset + 1 : offset + 1 + width], "big")


class Progress:
    """A count that only grows, and a way to wait until it grows."""

    def __init__(self) -> None:
        self.value = 0
        self._event = trio.Event()

    def advance(self, value: int) -> None:
        if value > self.value:
            self.value = value
            self._event.set()
            self._event = trio.Event()

    async def moved(self, within: float) -> bool:
        """Wait until the count grows; False if it did not within ``within`` seconds."""
        event = self._event
        with trio.move_on_after(within):
            await event.wait()
        return event.is_set()


class Tally:
    """What arrived during one run."""

    def __init__(self, count: int, prefix: bytes) -> None:
        self.receipts = _stats.Receipts(count)
        self.prefix = prefix
        self.stray = 0  # not one of this run's messages (a probe still in flight)
        self.unexpected = 0  # this run's kind of message with a number out of range
        self.batches = 0
        self.first_ns = 0  # when the first and the last new message arrived
        self.last_ns = 0
        self.progress = Progress()  # batches taken

    def take(self, batch: list[bytes], now_ns: int) -> None:
        prefix, offset, size = self.prefix, len(self.prefix), len(self.receipts)
        mark = self.receipts.mark
        new = False
        for message in batch:
            if not message.startswith(prefix):
                self.stray += 1
                continue
            seq = seq_at(message, offset)
            if 0 <= seq < size:
                new = mark(seq) or new
            else:
                self.unexpected += 1
        self.batches += 1
        if new:
            self.first_ns = self.first_ns or now_ns
            self.last_ns = now_ns
        self.progress.advance(self.batches)


async def _count(sub: ZmqSocket, tally: Tally, acks: ZmqSocket, every: int) -> None:
    """Count until cancelled (``collect`` or ``close`` cancels it); acknowledge the count
    whenever ``every`` more messages arrived (never if 0). An acknowledgement refused (none is, in
    practice: the publisher reads them) is made good by the next one."""
    acked = 0
    receipts = tally.receipts
    while True:
        batch = await sub.receive_batch(RECEIVE_BATCH)
        tally.take(batch, time.monotonic_ns())
        if every and receipts.received - acked >= every:
            acked = receipts.received
            acks.send_nowait(acked.to_bytes(8, "big"))


async def _read_acks(acks: ZmqSocket, acked: Progress) -> None:
    """Follow the subscriber's count until cancelled."""
    while True:
        batch = await acks.receive_batch(RECEIVE_BATCH)
        acked.advance(max(int.from_bytes(m, "big") for m in batch))


class BusEnd:
    """The command interpreter of one end (a PUB or a SUB, one at a time).

    Resource handling: the socket and the counting task are this object's; the counting task
    runs in the caller's nursery, in a cancel scope of its own. :meth:`close` ends both.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], nursery: trio.Nursery) -> None:
        self.ctx = ctx
        self.nursery = nursery
        self.sock: ZmqSocket | None = None  # the PUB or the SUB
        self.acks: ZmqSocket | None = None  # the PULL or the PUSH
        self.messages = Messages([], b"")
        self._built_for = (0, -1)  # (count, size) of self.messages
        self.tally: Tally | None = None
        self._counting: trio.CancelScope | None = None
        self._zap = False  # the ZAP handler of the direct path's CurveZMQ runs
        self.commands: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "pub": self.pub,
            "probe": self.probe,
            "publish": self.publish,
            "sub": self.sub,
            "probed": self.probed,
            "arm": self.arm,
            "collect": self.collect,
            "close": self.close,
        }

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.commands[command["cmd"]](command)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}

    def _sockets(self) -> tuple[ZmqSocket, ZmqSocket]:
        if self.sock is None or self.acks is None:
            raise RuntimeError("no socket open")
        return self.sock, self.acks

    # Publisher ---------------------------------------------------------------------------------

    async def pub(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wanted = (int(cmd["messages"]), int(cmd["bytes"]))
        if wanted != self._built_for:
            self.messages, self._built_for = build(*wanted), wanted
        await self.close(cmd)
        keys = _keypair(cmd.get("keys"))
        if keys is not None and cmd["path"] == "direct" and not self._zap:
            trusted = TrustedKeys(Path(cmd["keys"]))
            await self.nursery.start(serve_zap, self.ctx, _trusting(trusted))
            self._zap = True
        self.sock = pub = open_socket(self.ctx, SocketType.PUB, keys=keys)
        self.acks = acks = open_socket(self.ctx, SocketType.PULL)
        server_key = None
        if cmd["path"] == "broker":
            if keys is not None:
                server_key = read_public_key(public_key_path(cmd["keys"], "broker"))
            pub.connect(cmd["frontend"], server_key)
            endpoint = cmd["backend"]
        elif cmd["path"] == "direct":
            endpoint = pub.bind("tcp://127.0.0.1:*")
            server_key = keys.public if keys is not None else None
        else:
            raise ValueError(f"unknown path {cmd['path']!r}")
        return {
            "endpoint": endpoint,
            "server_key": server_key,
            "acks": acks.bind("tcp://127.0.0.1:*"),
            "message_bytes": round(self.messages.mean_bytes, 1),
        }

    async def probe(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"sent": self._sockets()[0].send_nowait(PROBE)}

    async def publish(self, cmd: dict[str, Any]) -> dict[str, Any]:
        (pub, acks), every = self._sockets(), max(1, int(cmd["checkpoint"]))
        window, quiet = int(cmd["window"]), float(cmd["quiet"])
        sent = refused = waits = 0
        stalled = False
        acked = Progress()
        first_ns = time.monotonic_ns()
        with trio.move_on_after(float(cmd["timeout"])) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_acks, acks, acked)
                for index, message in enumerate(self.messages.messages):
                    if window and sent - acked.value >= window:
                        # Full: wait until half of it is acknowledged (fewer, longer turns).
                        waits += 1
                        while sent - acked.value > window // 2 and not stalled:
                            stalled = not await acked.moved(quiet)  # each turn needs an ack
                    if stalled:
                        break
                    if pub.send_nowait(message):
                        sent += 1
                    else:  # a PUB never refuses: it drops at its high-water mark instead
                        refused += 1
                    if index % every == every - 1:
                        await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
        last_ns = time.monotonic_ns()
        return {
            "sent": sent,
            "refused": refused,
            "stalled": stalled,
            "window_waits": waits,
            "timed_out": deadline.cancelled_caught or stalled,
            "first_ns": first_ns,
            "last_ns": last_ns,
            "send_s": round((last_ns - first_ns) / 1e9, 4),
        }

    # Subscriber --------------------------------------------------------------------------------

    async def sub(self, cmd: dict[str, Any]) -> dict[str, Any]:
        await self.close(cmd)
        self.sock = sub = open_socket(self.ctx, SocketType.SUB, keys=_keypair(cmd.get("keys")))
        self.acks = acks = open_socket(self.ctx, SocketType.PUSH)
        sub.subscribe(TOPIC)
        sub.connect(cmd["endpoint"], cmd.get("server_key"))
        acks.connect(cmd["acks"])
        return {}

    async def probed(self, cmd: dict[str, Any]) -> dict[str, Any]:
        (sub, _), arrived = self._sockets(), False
        with trio.move_on_after(float(cmd["wait"])):
            while not arrived:  # bounded by the scope; each turn needs a batch
                arrived = PROBE in await sub.receive_batch(RECEIVE_BATCH)
        return {"arrived": arrived}

    async def arm(self, cmd: dict[str, Any]) -> dict[str, Any]:
        (sub, acks), settled = self._sockets(), 0
        with trio.move_on_after(SETTLE_MAX):
            while True:  # bounded by the scope; each turn needs a batch
                with trio.move_on_after(SETTLE_QUIET) as quiet:
                    settled += len(await sub.receive_batch(RECEIVE_BATCH))
                if quiet.cancelled_caught:
                    break
        prefix = build(1, int(cmd["bytes"])).prefix
        self.tally = tally = Tally(int(cmd["messages"]), prefix)
        every = int(cmd["ack_every"])  # 0: none (no window)
        self._counting = await self.nursery.start(_scoped, _count, sub, tally, acks, every)
        return {"settled_messages": settled}

    async def collect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        tally = self.tally
        if tally is None:
            raise RuntimeError("collect without arm")
        sent, quiet = int(cmd["sent"]), float(cmd["quiet"])
        receipts = tally.receipts
        with trio.move_on_after(float(cmd["timeout"])) as deadline:
            while receipts.received < sent:  # each turn needs a batch
                if not await tally.progress.moved(quiet):
                    break
            await trio.sleep(float(cmd["grace"]))  # duplicates and strays would show meanwhile
        self._stop_counting()
        lost = sent - receipts.received
        return {
            "received": receipts.received,
            "lost": lost,
            "duplicates": receipts.duplicates,
            "unexpected": tally.unexpected,
            "stray": tally.stray,
            "lost_examples": receipts.missing_indexes(5) if lost else [],
            "timed_out": deadline.cancelled_caught,
            "first_ns": tally.first_ns,
            "last_ns": tally.last_ns,
            "batches": tally.batches,
            "mean_batch": round(receipts.received / tally.batches, 1) if tally.batches else None,
        }

    # Both --------------------------------------------------------------------------------------

    def _stop_counting(self) -> None:
        if self._counting is not None:
            self._counting.cancel()
            self._counting = None

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._stop_counting()
        for sock in (self.sock, self.acks):
            if sock is not None:
                await sock.aclose()
        self.sock = self.acks = None
        return {}


def _keypair(directory: str | None) -> Keypair | None:
    """The bench's own keypair (:data:`SENDER`) in the key directory, made if missing."""
    if directory is None:
        return None
    path = secret_key_path(directory, SENDER)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # (the other process made it meanwhile)
            make_keys(directory, [SENDER])
    return read_keypair(path)


def _trusting(trusted: TrustedKeys) -> Callable[[ZapRequest], bool]:
    def authorize(request: ZapRequest) -> bool:
        return request.public_key is not None and request.public_key in trusted

    return authorize


async def _scoped(
    fn: Callable[..., Awaitable[None]],
    *args: Any,
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``fn(*args)`` in a cancel scope handed to the starter."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await fn(*args)


async def serve() -> None:
    with make_context() as ctx:
        async with trio.open_nursery() as nursery:
            end = BusEnd(ctx, nursery)
            try:
                await serve_commands(end.handle)
            finally:
                await end.close({})
                nursery.cancel_scope.cancel()


def main() -> int:
    trio.run(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())

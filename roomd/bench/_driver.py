"""The load-generating process: ``python -m roomd.bench._driver``.

It reads one JSON command per line on stdin, carries it out on its :class:`~._engine.Engine`
and answers with one JSON line on stdout; the orchestrator (:mod:`._run`) waits for the answer
before it sends the next command. Commands:

``open``    open connections (``targets``: ``[user, host, port, room, token]``), at most
            ``concurrency`` handshakes at a time; with ``urls`` (``[host, port]`` of every
            node) each user resumes its session after a drop (see :mod:`._resume`)
``settle``  read until nothing arrived for ``quiet`` seconds (at most ``max`` seconds)
``arm``     prepare a phase (senders, receivers, message count, rate; with ``acks``, sends
            are acknowledged and only what was acknowledged is expected; ``drops``: connections
            to cut during the phase, and where they resume); receivers start counting
``go``      send the phase's messages and collect deliveries until every expected one arrived
            (then ``grace`` more seconds, to count duplicates) or ``timeout``
``hold``    serve the connections for ``seconds`` (answering the node's pings)
``ping``    a protocol ``ping`` on every open connection of a group; how many answered
``close``   close a group's connections gracefully
``quit``    exit

Every answer carries the ``error`` frames, close codes and failed opens seen since the previous
answer. A command that raises is answered with ``{"error": ...}``.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Final

import orjson

from . import _ws
from ._engine import BENCH_EVENT, OPEN, Conn, Engine, Target
from ._progress import open_cell
from ._stats import Receipts

FLUSH_BYTES: Final = 16 * 1024  # a sender writes its queued frames at least this often
PADDING: Final = b"x" * 64
_SEND: Final = (
    b'{"type":"event","event":"send","data":{"to":%b,%b"event":"'
    + BENCH_EVENT.encode()
    + b'","data":[%d,%d,%d,%d,"%b"]}}'
)
_EXCEPT_SELF: Final = b'"exceptSelf":true,'
_VOLATILE: Final = b'"volatile":true,'
# A send whose ack is awaited (the session workloads: only what was acknowledged must arrive),
# with a client message id, so that a node answers a repeat with the first answer.
_SEND_ACKED: Final = (
    b'{"type":"event","id":%d,"cmid":"b%d-%d","event":"send","data":{"to":%b,%b"event":"'
    + BENCH_EVENT.encode()
    + b'","data":[%d,%d,%d,%d,"%b"]}}'
)
ACK_BASE: Final = 1000  # a send's event id is ACK_BASE + its message number (1 is the join)
_PING: Final = b'{"type":"ping","ts":0}'

_Slot = tuple[int, Conn, int, int, bytes, bytes]  # offset_ns, conn, sender, k, to, flag


class Phase:
    """One measured phase as this driver sees it: what its senders send, what its receivers
    expect, and what arrived. It is the engine's :class:`~._engine.Sink` while it runs.

    Messages are numbered ``sender * messages + k``; each bench push carries
    ``[phase, sender, k, sent_ns, padding]``.
    """

    def __init__(self, engine: Engine, spec: dict[str, Any]) -> None:
        self.engine = engine
        self.id: int = spec["id"]
        self.messages: int = spec["messages"]
        total = spec["senders_total"] * self.messages
        self.sent = [0] * total
        self.first = [0] * total
        self.last = [0] * total
        self.latencies: list[int] = []
        self.expected = 0
        self.remaining = 0
        self.unexpected = 0
        self.stray = 0
        self.numbered = 0  # bench pushes received with a seq (reliable ones)
        self.missing_receivers = 0
        self.padding = b"x" * int(spec.get("padding", len(PADDING)))
        self.receivers: list[tuple[str, Receipts]] = []  # (user, what it got)
        self.slots: dict[str, list[int]] = {}  # user -> the senders it expects, in slot order
        for entry in spec["receivers"]:
            want = len(entry["expect"]) * self.messages
            self.expected += want
            conn = engine.by_user.get(entry["user"])
            if conn is None or conn.state != OPEN:
                self.missing_receivers += 1
                continue
            conn.expect = {s: slot for slot, s in enumerate(entry["expect"])}
            conn.receipts = Receipts(want)
            self.receivers.append((conn.user, conn.receipts))
            self.slots[conn.user] = list(entry["expect"])
        self.remaining = sum(len(r) for _, r in self.receivers)
        # Session workloads: sends are acknowledged, receivers resume, drops are scripted.
        self.acks = bool(spec.get("acks"))
        self.answers = bytearray(total)  # 1: acknowledged, 2: refused (an error ack)
        self.count_acked = 0
        self.count_refused = 0
        self.arrivals: list[int] = []  # message number, arrival time, ... (session workloads)
        self.drops: list[tuple[float, str, float, tuple[str, int]]] = sorted(
            (d["at"], d["user"], d["pause"], (d["to"][0], d["to"][1]))
            for d in spec.get("drops", ())
        )
        self.cell = open_cell(spec.get("progress"))  # deliveries so far, for the progress line
        self.schedule = self._schedule(spec)
        self.senders = {slot[1] for slot in self.schedule}
        self._next = 0
        self.start = 0
        self.count_sent = 0
        self._released = engine.released

    def _schedule(self, spec: dict[str, Any]) -> list[_Slot]:
        """``(offset_ns, conn, sender, k, to, flag)`` in sending order. At a rate, sender ``s`` of
        ``S`` starts ``s / S`` of an interval late, so the senders do not fire together."""
        rate = spec.get("rate")
        total = spec["senders_total"]
        interval = int(1e9 / rate) if rate else 0
        volatile = _VOLATILE if spec.get("volatile") else b""  # (every sender of the phase)
        out: list[_Slot] = []
        for entry in spec["senders"]:
            conn = self.engine.by_user.get(entry["user"])
            if conn is None or conn.state != OPEN:
                continue
            s = entry["index"]
            to = orjson.dumps(entry["to"])
            flag = (_EXCEPT_SELF if entry.get("except_self") else b"") + volatile
            offset = s * interval // max(1, total)
            out.extend((offset + k * interval, conn, s, k, to, flag) for k in range(self.messages))
        out.sort(key=lambda item: item[0])
        return out

    # Sending ------------------------------------------------------------------------------------

    def tick(self, now: int) -> int | None:
        """Send every message that is due, cut the connections whose drop is due; when the
        next thing is due (``None``: nothing more)."""
        wake = self._send(now)
        if self.cell is not None:
            self.cell.offer(now, len(self.latencies))
        if not self.drops:
            return wake
        while self.drops and self.start + int(self.drops[0][0] * 1e9) <= now:
            _, user, pause, to = self.drops.pop(0)
            conn = self.engine.by_user.get(user)
            if conn is not None:
                self.engine.drop(conn, pause, to)
        if self.drops:
            due = self.start + int(self.drops[0][0] * 1e9)
            wake = due if wake is None else min(wake, due)
        return wake

    def _send(self, now: int) -> int | None:
        schedule, engine = self.schedule, self.engine
        i = self._next
        previous: Conn | None = None
        touched: set[Conn] = set()
        while i < len(schedule):
            offset, conn, s, k, to, flag = schedule[i]
            if self.start + offset > now:
                break
            if conn.state != OPEN:  # closed under us: the message is never sent
                i += 1
                continue
            if conn.writing:  # the kernel's buffer is full: wait until it drains
                break
            if conn is not previous and previous is not None and previous.out:
                engine.flush(previous)
            stamp = time.monotonic_ns()
            if self.acks:
                index = s * self.messages + k
                args = (ACK_BASE + index, self.id, index, to, flag, self.id, s, k, stamp)
                frame = _SEND_ACKED % (*args, self.padding)
            else:
                frame = _SEND % (to, flag, self.id, s, k, stamp, self.padding)
            engine.queue(conn, _ws.client_frame(frame))
            self.sent[s * self.messages + k] = stamp
            self.count_sent += 1
            touched.add(conn)
            if conn.out_len >= FLUSH_BYTES:
                engine.flush(conn)
            previous = conn
            i += 1
        self._next = i
        for conn in touched:
            if conn.out and not conn.writing:
                engine.flush(conn)
        if i < len(schedule):
            due = self.start + schedule[i][0]
            return due if due > now else now + 1_000_000
        return None

    @property
    def all_sent(self) -> bool:
        return self._next >= len(self.schedule) and not any(
            c.out for c in self.senders if c.state == OPEN
        )

    def finished(self) -> bool:
        """Everything sent (and, with acks, answered), and every delivery still possible
        arrived (a receiver whose connection closed, and that does not resume, will get
        nothing more)."""
        if not self.all_sent or self.drops:
            return False
        if self.acks and self.count_acked + self.count_refused < self.count_sent:
            return False
        if self.remaining <= 0:
            return True
        if self.engine.released != self._released:
            self._released = self.engine.released
            engine = self.engine
            possible = sum(
                r.missing
                for user, r in self.receivers
                if engine.by_user[user].state == OPEN or engine.reconnecting(user)
            )
            return possible == 0
        return False

    def acked(self, conn: Conn, frame: dict[str, Any], now: int) -> None:
        """The answer to a send: acknowledged, or refused (its deliveries are not expected)."""
        index = int(frame.get("id", 0)) - ACK_BASE
        if not self.acks or not 0 <= index < len(self.answers) or self.answers[index]:
            return
        if frame.get("error") is None:
            self.answers[index] = 1
            self.count_acked += 1
            return
        self.answers[index] = 2
        self.count_refused += 1
        sender, k = divmod(index, self.messages)
        for user, receipts in self.receivers:
            slot = self.slots[user].index(sender) if sender in self.slots[user] else -1
            if slot >= 0 and not receipts.has(slot * self.messages + k):
                self.remaining -= 1

    # Receiving ----------------------------------------------------------------------------------

    def record(self, conn: Conn, data: Any, now: int, numbered: bool) -> None:
        self.numbered += numbered
        try:
            phase, s, k, sent = data[0], data[1], data[2], data[3]
        except (TypeError, IndexError, KeyError):
            self.unexpected += 1
            return
        if phase != self.id:
            self.stray += 1
            return
        expect, receipts = conn.expect, conn.receipts
        slot = expect.get(s) if expect is not None else None
        if slot is None or receipts is None or not 0 <= k < self.messages:
            self.unexpected += 1
            return
        if receipts.mark(slot * self.messages + k):
            index = s * self.messages + k
            if self.answers[index] != 2:
                self.remaining -= 1
            self.latencies.append(now - sent)
            if self.acks:
                self.arrivals += (index, now)
            if not self.first[index]:
                self.first[index] = now
            self.last[index] = now

    # Running ------------------------------------------------------------------------------------

    def go(self, timeout: float, grace: float) -> dict[str, Any]:
        engine = self.engine
        self.start = time.monotonic_ns()
        deadline = self.start + int(timeout * 1e9)
        done = engine.run(self.finished, deadline, self.tick)
        finished = time.monotonic_ns()
        if done and grace > 0:
            engine.pump(grace)
        engine.sink = None
        if self.cell is not None:
            self.cell.write(len(self.latencies))
            self.cell.close()
        received = sum(r.received for _, r in self.receivers)
        expected = self.expected
        lost_examples: list[str] = []
        for user, receipts in self.receivers:
            if receipts.missing and len(lost_examples) < 5:
                lost_examples.append(f"{user}: {receipts.missing_indexes(5)}")
        extra: dict[str, Any] = {}
        if self.acks:
            expected, received, extra = self._acked_accounting()
            lost_examples = extra.pop("lost_examples")
        result = {
            "timed_out": not done,
            "start_ns": self.start,
            "done_ns": finished,
            "scheduled": len(self.schedule),
            "sent": self.count_sent,
            "sent_ns": self.sent,
            "expected": expected,
            "received": received,
            "duplicates": sum(r.duplicates for _, r in self.receivers),
            "unexpected": self.unexpected,
            "stray": self.stray,
            "numbered": self.numbered,
            "missing_receivers": self.missing_receivers,
            "lost_examples": lost_examples,
            "latencies": self.latencies,
            "first": self.first,
            "last": self.last,
            **extra,
        }
        for user, _ in self.receivers:
            conn = engine.by_user[user]
            conn.receipts = None
            conn.expect = None
        return result

    def _acked_accounting(self) -> tuple[int, int, dict[str, Any]]:
        """Expected and received deliveries counting acknowledged messages only (what was not
        acknowledged may arrive or not; it must never arrive twice), and the rest."""
        expected = received = unacked_delivered = 0
        examples: list[str] = []
        n = self.messages
        for user, receipts in self.receivers:
            missing: list[int] = []
            for slot, sender in enumerate(self.slots[user]):
                for k in range(n):
                    got = receipts.has(slot * n + k)
                    state = self.answers[sender * n + k]
                    if state == 1:
                        expected += 1
                        received += got
                        if not got and len(missing) < 5:
                            missing.append(sender * n + k)
                    elif got:
                        unacked_delivered += 1
            if missing and len(examples) < 5:
                examples.append(f"{user}: {missing}")
        sessions = self.engine.sessions
        records = [
            r
            for user, _ in self.receivers
            if user in sessions
            for r in sessions[user].records
            if r["dropped_ns"] >= self.start
        ]
        pending = [u for u, _ in self.receivers if self.engine.reconnecting(u)]
        return (
            expected,
            received,
            {
                "acked": self.count_acked,
                "refused": self.count_refused,
                "unacked": self.count_sent - self.count_acked - self.count_refused,
                "unacked_delivered": unacked_delivered,
                "arrivals": self.arrivals,
                "reconnect_log": records,
                "still_reconnecting": pending,
                "retries": dict(self.engine.retries),
                "lost_examples": examples,
            },
        )


class Driver:
    """The command interpreter around one engine."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.phase: Phase | None = None
        self._pings_seen = 0
        self.commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "open": self.open,
            "settle": self.settle,
            "arm": self.arm,
            "go": self.go,
            "hold": self.hold,
            "ping": self.ping,
            "close": self.close,
        }

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = self.commands[command["cmd"]](command)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        engine = self.engine
        reply["errors"] = dict(engine.errors)
        reply["error_messages"] = list(engine.error_messages)
        reply["closes"] = {str(k): v for k, v in engine.closes.items()}
        reply["failures"] = dict(engine.failures)
        engine.errors.clear()
        engine.error_messages.clear()
        engine.closes.clear()
        engine.failures.clear()
        return reply

    def _group(self, prefix: str) -> list[Conn]:
        return [c for c in self.engine.by_user.values() if c.user.startswith(prefix)]

    @staticmethod
    def _deadline(seconds: float) -> int:
        return time.monotonic_ns() + int(seconds * 1e9)

    def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        targets = [Target(*entry) for entry in cmd["targets"]]
        cell = open_cell(cmd.get("progress"))
        conns = self.engine.open(
            targets,
            int(cmd["concurrency"]),
            self._deadline(cmd["timeout"]),
            deflate=bool(cmd.get("deflate")),
            tls=bool(cmd.get("tls")),
            urls=[(host, port) for host, port in cmd["urls"]] if cmd.get("urls") else None,
            seed=int(cmd.get("seed", 0)),
            progress=None if cell is None else cell.offer,
        )
        if cell is not None:
            cell.close()
        opened = [c for c in conns if c.state == OPEN]
        return {
            "requested": len(targets),
            "opened": len(opened),
            "start_ns": min((c.started_at for c in conns), default=0),
            "end_ns": max((c.opened_at for c in opened), default=0),
            "handshake_ns": [c.opened_at - c.started_at for c in opened],
        }

    def settle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        engine = self.engine
        start = time.monotonic_ns()
        quiet = int(cmd["quiet"] * 1e9)
        frames = engine.frames_in
        calm = engine.run(
            lambda: time.monotonic_ns() - max(engine.last_frame_at, start) >= quiet,
            start + int(cmd["max"] * 1e9),
        )
        return {
            "quiet": calm,
            "frames": engine.frames_in - frames,
            "seconds": (time.monotonic_ns() - start) / 1e9,
        }

    def arm(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.phase = Phase(self.engine, cmd["phase"])
        self.engine.sink = self.phase
        return {"expected": self.phase.expected, "scheduled": len(self.phase.schedule)}

    def go(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.phase is None:
            raise RuntimeError("go without arm")
        phase, self.phase = self.phase, None
        return phase.go(float(cmd["timeout"]), float(cmd.get("grace", 0.0)))

    def hold(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = [c for c in self._group(cmd["prefix"]) if c.state == OPEN]
        answered = self.engine.pings_answered
        self.engine.pump(float(cmd["seconds"]))
        return {
            "held": len(group),
            "dropped": sum(1 for c in group if c.state != OPEN),
            "server_pings": self.engine.pings_answered - answered,
        }

    def ping(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = [c for c in self._group(cmd["prefix"]) if c.state == OPEN]
        frame = _ws.client_frame(_PING)
        for conn in group:
            conn.ponged = False
            self.engine.send(conn, frame)
        self.engine.run(lambda: all(c.ponged for c in group), self._deadline(cmd["timeout"]))
        return {"asked": len(group), "answered": sum(1 for c in group if c.ponged)}

    def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        group = self._group(cmd["prefix"])
        graceful, forced = self.engine.close(group, self._deadline(cmd["timeout"]))
        return {"closed": graceful, "forced": forced}


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> int:
    _raise_fd_limit()
    driver = Driver()
    out = sys.stdout.buffer
    for line in _commands(driver.engine, sys.stdin.fileno()):
        if not line.strip():
            continue
        command = orjson.loads(line)
        if command.get("cmd") == "quit":
            break
        out.write(orjson.dumps(driver.handle(command)) + b"\n")
        out.flush()
    return 0


def _commands(engine: Engine, fd: int) -> Iterator[bytes]:
    """The lines read from ``fd``; while none is there, the connections are served."""
    buffer = b""
    while True:
        while (end := buffer.find(b"\n")) >= 0:
            yield buffer[:end]
            buffer = buffer[end + 1 :]
        engine.serve_until_readable(fd)
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        buffer += chunk


if __name__ == "__main__":
    sys.exit(main())

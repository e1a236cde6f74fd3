"""The session workloads: W1's room at W1's rate through a disconnection, a drain, a crash.

Each runs on a fresh cluster (a broker and the nodes, the cluster settings at the node's
defaults: heartbeats every 0.5 s, a node down after three missed). As in W1, the receivers join
room ``bench`` round-robin over the nodes and one sender sends to it with ``exceptSelf`` at the
W1 rate; here every send carries an id and a client message id, so that only what a node
acknowledged is expected (a send that was not acknowledged may arrive or not, but never twice),
and every receiver resumes its session when its connection drops, as the Trio client does
(:mod:`._resume`: why the load generator does it rather than :class:`roomd.client.Client`).

``resume``
    A fraction of the receivers (``--resume-fraction``) lose their connection, each at a random
    moment of the first half of the phase: the TCP connection is reset, with no close frame.
    Each resumes after a random pause (up to ``--resume-pause`` seconds, well within the resume
    window) on a node drawn at random (its own, as likely as any other).
``drain``
    ``POST /drain`` to one node (``--fault-at`` seconds into the phase): the node that numbers
    the room's stream, the one whose departure costs most. Its clients are moved by
    ``reconnect`` frames over ``shutdown.drain_period``.
``crash``
    SIGKILL to that node. Its clients reconnect as the Trio client does: to it first (refused),
    then to the next node.

The sender sits on another node than the one drained or killed. Every figure is in the result;
:mod:`._report` prints the main ones.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any, Final

import trio

from ..cluster import room_stream
from ..cluster._streams import ranking
from . import _stats
from ._procs import BenchError, ClusterControl, Node, get_json
from ._workloads import ROOM, Bench

EXIT_WAIT: Final = 60.0  # seconds a drained node may take to exit


def victim_of(nodes: list[Node], room: str = ROOM) -> Node:
    """The node that numbers ``room``'s stream: rendezvous hashing over the node names, as
    every node computes it (:func:`roomd.cluster._streams.ranking`)."""
    first = ranking(room_stream("/", room), [n.name for n in nodes])[0]
    return next(n for n in nodes if n.name == first)


async def run_session(bench: Bench, name: str, control: ClusterControl | None) -> dict[str, Any]:
    s, nodes, count = bench.settings, bench.nodes, len(bench.drivers)
    if name != "resume" and control is None:
        return {"skipped": "needs a cluster started by the benchmark (not --urls)"}
    seed = s.seed if s.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    victim = victim_of(nodes) if name != "resume" else None
    sender_node = next(n for n in nodes if n is not victim)
    sender = f"{name}-s"
    receivers = [f"{name}-r{i}" for i in range(s.receivers)]
    homes = {user: nodes[i % len(nodes)] for i, user in enumerate(receivers)}
    targets: list[list[list[Any]]] = [[] for _ in range(count)]
    targets[0].append([sender, sender_node.host, sender_node.port, ROOM, None])
    for i, user in enumerate(receivers):
        home = homes[user]
        targets[i % count].append([user, home.host, home.port, ROOM, None])
    urls = [[n.host, n.port] for n in nodes]
    setup = await bench.open(targets, max(60.0, s.receivers / 50), urls=urls, seed=seed)
    await bench.settle()
    messages = s.session_messages
    duration = messages / s.rate
    drops = []
    if name == "resume":
        drops = _drops(rng, receivers, nodes, s.resume_fraction, s.resume_pause, duration)
    phase_id = bench.next_phase()
    specs = []
    for d in range(count):
        mine = set(receivers[d::count])
        spec: dict[str, Any] = {
            "id": phase_id,
            "messages": messages,
            "senders_total": 1,
            "rate": s.rate,
            "padding": s.padding,
            "acks": True,
            "senders": [],
            "receivers": [{"user": u, "expect": [0]} for u in receivers[d::count]],
            "drops": [drop for drop in drops if drop["user"] in mine],
        }
        if d == 0:
            spec["senders"] = [
                {"user": sender, "index": 0, "to": {"room": ROOM}, "except_self": True}
            ]
        specs.append(spec)
    during = None
    if name == "drain":
        assert victim is not None and control is not None
        during = _drain(victim, control, s.fault_at)
    elif name == "crash":
        assert victim is not None and control is not None
        during = _crash(victim, control, s.fault_at)
    timeout = s.timeout + duration
    result = await bench.phase(name, specs, timeout, during)
    affected = {u for u, home in homes.items() if home is victim}
    if name == "resume":
        affected = {d["user"] for d in drops}
    result.update(
        setup=setup,
        seed=seed,
        receivers=s.receivers,
        victim=victim.name if victim is not None else None,
        sender_node=sender_node.name,
        affected=len(affected),
    )
    result.update(session_figures(name, result, affected))
    del result["arrivals"]  # (large; summarised above)
    return result


def _drops(
    rng: random.Random,
    receivers: list[str],
    nodes: list[Node],
    fraction: float,
    pause: float,
    duration: float,
) -> list[dict[str, Any]]:
    """Who loses the connection, when (in the first half of the phase, not before a tenth of
    it), for how long, and on which node it resumes."""
    chosen = rng.sample(receivers, round(fraction * len(receivers)))
    out = []
    for user in sorted(chosen):
        to = rng.choice(nodes)
        out.append(
            {
                "user": user,
                "at": round(rng.uniform(0.1, 0.5) * duration, 3),
                "pause": round(rng.uniform(0.0, pause), 3),
                "to": [to.host, to.port],
            }
        )
    return out


def _drain(victim: Node, control: ClusterControl, at: float) -> Any:
    async def fault() -> dict[str, Any]:
        await trio.sleep(at)
        started = time.monotonic_ns()
        answer = await get_json(victim, "/drain", method="POST")
        exited = None
        with trio.move_on_after(EXIT_WAIT):
            await control.wait_exit(victim.name)
            exited = time.monotonic_ns()
        return {"at_ns": started, "answer": answer, "exited_ns": exited}

    return fault


def _crash(victim: Node, control: ClusterControl, at: float) -> Any:
    async def fault() -> dict[str, Any]:
        await trio.sleep(at)
        started = time.monotonic_ns()
        try:
            control.signal(victim.name, signal.SIGKILL)
        except ProcessLookupError:
            raise BenchError(f"{victim.name} was gone before the crash") from None
        return {"at_ns": started}

    return fault


def session_figures(name: str, result: dict[str, Any], affected: set[str]) -> dict[str, Any]:
    """What the reconnects of a session workload came to (pure: times in the result)."""
    records = [r for r in result["reconnect_log"] if r["user"] in affected]
    done = [r for r in records if "replay_done_ns" in r]
    resumed = [r for r in done if r.get("resumed")]
    out: dict[str, Any] = {
        "reconnects": len(result["reconnect_log"]),
        "resumed": sum(1 for r in result["reconnect_log"] if r.get("resumed")),
        "not_resumed": sorted(
            {
                f"{r['user']}: {r.get('reason') or r.get('gave_up')}"
                for r in result["reconnect_log"]
                if not r.get("resumed")
            }
        )[:5],
        "refused_resumes": sum(1 for r in result["reconnect_log"] if not r.get("resumed")),
        "affected_back": len({r["user"] for r in resumed}),
        "replayed": sum(r.get("replayed", 0) for r in done),
        "gaps": sum(r.get("gaps", 0) for r in done),
        "attempts": _stats.Summary.of_ns(r["attempts"] * 1_000_000 for r in done).as_dict(),
        # From the welcome to the last replayed push, and from the connection that resumed
        # (TCP connect) to that push.
        "replay_ms": _ms(r["replay_done_ns"] - r["welcome_ns"] for r in resumed),
        "resume_ms": _ms(r["replay_done_ns"] - r["connect_ns"] for r in resumed),
    }
    fault = result.get("fault", {})
    start = fault.get("at_ns")
    if start is not None:
        back = max((r["replay_done_ns"] for r in resumed), default=None)
        last_left = max((r["dropped_ns"] for r in records), default=None)
        out["fault_s"] = {
            # every affected client resumed (and got its replay) elsewhere
            "all_back": _s(back, start) if len(out_users(resumed)) == len(affected) else None,
            "node_empty": _s(last_left, start),  # its last client left it
            "exited": _s(fault.get("exited_ns"), start),
        }
        end = back if back is not None else start
        out["latency_during_ms"] = _latency_between(result, start, end)
    if name == "resume":
        out["back_ms"] = _ms(r["replay_done_ns"] - r["dropped_ns"] for r in resumed)
    return out


def out_users(records: list[dict[str, Any]]) -> set[str]:
    return {r["user"] for r in records}


def _latency_between(result: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """Latencies of the deliveries of the messages sent between ``start`` and ``end``."""
    sent = result["sent_ns"]
    arrivals = result["arrivals"]
    values = []
    for i in range(0, len(arrivals), 2):
        index, at = arrivals[i], arrivals[i + 1]
        if start <= sent[index] <= end:
            values.append(at - sent[index])
    return _stats.Summary.of_ns(values).as_dict()


def _ms(values: Any) -> dict[str, Any]:
    return _stats.Summary.of_ns(values).as_dict()


def _s(at: int | None, start: int) -> float | None:
    return None if at is None else round((at - start) / 1e9, 3)

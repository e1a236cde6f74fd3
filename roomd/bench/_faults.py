"""The fault workloads: a cluster's own faults under light traffic, every delivery accounted for.

Each fault runs on a fresh cluster (a broker and five nodes, the cluster settings at the node's
defaults). 40 users, spread evenly over the nodes, are in one room, each a Trio client given
every node's URL (:mod:`._clients`); together they send 20 room messages and 20 direct messages
(to the next user, on another node) a second; ``--drivers N`` shares the users among N client
processes. ``fault_at`` seconds in, one fault:

==================== ==========================================================================
``fault-kill``        SIGKILL to a node
``fault-stop``        SIGSTOP to a node, SIGCONT 8 s later
``fault-broker-kill`` SIGKILL to the broker, started again 3 s later
``fault-broker-stop`` SIGSTOP to the broker, SIGCONT 5 s later
``fault-term``        SIGTERM to a node (it stops: its clients are closed with 1001)
``fault-restart``     SIGKILL to a node, started again at once (it serves within about 1.5 s)
==================== ==========================================================================

The node is the one that numbers the room's stream (the one whose fault costs most). The
traffic goes on for ``fault_after`` seconds once the fault is over, stops, and the clients are
given time to get everything (:func:`tally` says what "everything" is).
"""

from __future__ import annotations

import collections
import signal
import time
from typing import Any, Final

import trio

from . import _stats
from ._procs import ClusterControl, Node
from ._sessions import victim_of
from ._workloads import Bench

ROOM: Final = "faults"
SETTLE: Final = 1.0  # seconds after the joins, for every node to know every member
OPEN_S: Final = 60.0  # seconds the clients get to connect and join, at least
OPEN_PER_USER_S: Final = 0.15  # and per user (800 users: 120 s)
COLLECT: Final = 30.0  # seconds the clients get to receive what was acknowledged
VIEWS_S: Final = 10.0  # seconds a client process gets to ask its members' views, at least
VIEWS_PER_USER_S: Final = 0.05  # and per member (800 in a process: 40 s)
STOP_S: Final = 8.0  # fault-stop: how long the node is frozen
BROKER_DOWN_S: Final = 3.0  # fault-broker-kill: how long the broker is gone
BROKER_STOP_S: Final = 5.0  # fault-broker-stop: how long it is frozen
# The clients: the library's defaults but for the heartbeat, which notices a silent node within
# 3 s (as tests/test_chaos.py does; with the default, 15 s, a frozen node's clients would wait
# for it), and the call timeout, long enough for a send to outlive the longest fault (8 s).
CLIENT: Final = {"heartbeat_interval": 1.0, "heartbeat_timeout": 2.0, "call_timeout": 20.0}

FAULTS: Final = {
    "fault-kill": "kill -9 a node",
    "fault-stop": f"SIGSTOP a node {STOP_S:g} s, then SIGCONT",
    "fault-broker-kill": f"kill -9 the broker, restart after {BROKER_DOWN_S:g} s",
    "fault-broker-stop": f"SIGSTOP the broker {BROKER_STOP_S:g} s",
    "fault-term": "SIGTERM a node",
    "fault-restart": "kill -9 a node and restart it at once",
}


async def run_fault(bench: Bench, name: str, control: ClusterControl | None) -> dict[str, Any]:
    s, nodes = bench.settings, bench.nodes
    if control is None:
        return {"skipped": "needs a cluster started by the benchmark (not --urls)"}
    victim = victim_of(nodes, ROOM)
    users = [f"u{i}" for i in range(s.fault_users)]
    homes = {user: nodes[i % len(nodes)] for i, user in enumerate(users)}
    urls = [_url(n) for n in nodes]
    count = len(bench.drivers)
    shares = [users[k::count] for k in range(count)]  # (--drivers: client processes)
    # (each join is pushed to the members before it: opening grows with the square of the users)
    opened_within = max(OPEN_S, OPEN_PER_USER_S * len(users) / count)
    setup = CLIENT | {"cmd": "open", "urls": urls, "room": ROOM, "timeout": opened_within}
    await bench.on_all(
        [setup | {"users": [[u, _url(homes[u])] for u in share]} for share in shares], opened_within
    )
    await trio.sleep(SETTLE)
    per_user = len(users)
    every = {"room_every": per_user / s.fault_room_rate, "dm_every": per_user / s.fault_dm_rate}
    # Every user sends to the next (on the next node), the schedules spread over the period.
    plan = {u: [u, users[(i + 1) % per_user], i / per_user] for i, u in enumerate(users)}
    starts = [{"cmd": "start", "schedule": [plan[u] for u in share]} | every for share in shares]
    started = await bench.on_all(starts, 0.0)
    await trio.sleep(s.fault_at)
    fault = await _inject(name, control, victim, len(nodes))
    await trio.sleep(s.fault_after)
    stopped = await bench.on_all([{"cmd": "stop"}] * count, CLIENT["call_timeout"])
    expect = [acked for reply in stopped for acked in reply["acked"]]
    grace = max(1.0, s.grace)
    views = max(VIEWS_S, VIEWS_PER_USER_S * max(len(share) for share in shares))
    collect = {
        "cmd": "collect",
        "timeout": COLLECT,
        "grace": grace,
        "views_timeout": views,
        "expect": expect,
    }
    raw = merge_collected(await bench.on_all([collect] * count, COLLECT + grace + views))
    hit = {u for u, home in homes.items() if home is victim} if "broker" not in name else set()
    result = tally(raw, fault["start_ns"], fault["end_ns"], hit)
    result.update(
        fault=FAULTS[name],
        victim="broker" if "broker" in name else victim.name,
        users=len(users),
        hit=len(hit),
        clients=count,
        traffic_started_ns=min(r["started_ns"] for r in started),
        fault_s=round((fault["end_ns"] - fault["start_ns"]) / 1e9, 3),
        **{k: v for k, v in fault.items() if k.endswith("_s")},
    )
    dead = [n for n in bench.dead_nodes() if n != victim.name]
    if dead:
        result["dead_nodes"] = dead
    return result


def _url(node: Node) -> str:
    return f"{'wss' if node.tls else 'ws'}://{node.host}:{node.port}"


async def _inject(name: str, control: ClusterControl, victim: Node, nodes: int) -> dict[str, Any]:
    """Do the fault; when it began and when it was over (the process is back, or woken)."""
    node = victim.name
    start = time.monotonic_ns()
    out: dict[str, Any] = {}
    if name == "fault-kill":
        control.signal(node, signal.SIGKILL)
    elif name == "fault-stop":
        await _paused(control, node, STOP_S)
    elif name == "fault-broker-kill":
        control.signal("broker", signal.SIGKILL)
        await control.wait_exit("broker")
        await trio.sleep(BROKER_DOWN_S)
        await control.restart("broker")
    elif name == "fault-broker-stop":
        await _paused(control, "broker", BROKER_STOP_S)
    elif name == "fault-term":
        control.signal(node, signal.SIGTERM)
        out["exit_status"] = await control.wait_exit(node)
    elif name == "fault-restart":
        control.signal(node, signal.SIGKILL)
        await control.wait_exit(node)
        await control.restart(node, peers=nodes - 1)
        out["back_s"] = round((time.monotonic_ns() - start) / 1e9, 3)  # it serves again
    return {"start_ns": start, "end_ns": time.monotonic_ns(), **out}


async def _paused(control: ClusterControl, name: str, seconds: float) -> None:
    control.signal(name, signal.SIGSTOP)
    try:
        await trio.sleep(seconds)
    finally:
        control.signal(name, signal.SIGCONT)


# Accounting (pure) ----------------------------------------------------------------------------


def merge_collected(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """What the client processes collected, as if one process had: their sends and members
    together, timed out if one did."""
    return {
        "timed_out": any(r["timed_out"] for r in replies),
        "collect_s": max(r["collect_s"] for r in replies),
        "sent": [s for r in replies for s in r["sent"]],
        "members": [m for r in replies for m in r["members"]],
    }


def tally(raw: dict[str, Any], start: int, end: int, hit: set[str]) -> dict[str, Any]:
    """What a fault cost, from everything the clients sent and saw.

    * **lost**: deliveries of acknowledged messages that never arrived (a room message is owed
      to every member, the sender's other connections included; a direct message to its
      addressee), counted *during* (sent from the fault's start until the cluster converged)
      and *after*; a message that was not acknowledged may arrive or not;
    * **duplicates**: any message a member got more than once;
    * **wrong presence**: ``room.left`` pushes, from the fault's start on, about users who never
      left; those about the users of the node that failed (``hit``), who did leave until they
      resumed elsewhere, are counted apart, as are the ``room.joined`` that follow;
    * **hit shown**: seconds from the fault's start until the last ``room.left`` about a user
      of the failed node (how long the others were shown it);
    * **converged**: seconds from the fault's end until the last presence push or reconnect;
      **caught up**: until the last acknowledged message sent before the end arrived
      everywhere it should;
    * **order**: members whose room messages came in an order another member contradicts;
    * **absent at end**: users missing from a member's view of the room at the end (what
      ``room.members`` answers it once everything arrived; every user is still a member), the
      state a resumed client reads again where it missed a membership push.
    """
    members = raw["members"]
    counts = {m["user"]: collections.Counter(d[0] for d in m["deliveries"]) for m in members}
    arrivals = {m["user"]: {d[0]: d[1] for d in m["deliveries"]} for m in members}
    users = list(counts)
    events = [p[2] for m in members for p in m["presence"] if p[2] >= start]
    events += [o["at_ns"] for m in members for o in m["opens"] if o["reconnect"]]
    last_event = max([end, *events])
    converged = last_event
    lost_during = lost_after = expected = 0
    unacked = unacked_arrived = 0
    caught_up = end
    examples: list[str] = []
    latencies: list[int] = []
    for text, _sender, to, sent_ns, acked_ns, _failed in raw["sent"]:
        recipients = users if to is None else [to]
        got = [r for r in recipients if counts[r][text]]
        if not acked_ns:
            unacked += 1
            unacked_arrived += bool(got)
            continue
        expected += len(recipients)
        missing = len(recipients) - len(got)
        if missing:
            if sent_ns <= converged:
                lost_during += missing
            else:
                lost_after += missing
            if len(examples) < 20:  # when sent and acknowledged, from the fault's start
                sent_s, acked_s = (sent_ns - start) / 1e9, (acked_ns - start) / 1e9
                at = f"sent {sent_s:+.2f} s, acked {acked_s:+.2f} s"
                lacking = ", ".join(r for r in recipients if not counts[r][text])
                examples.append(f"{text} ({at}; {missing} of {len(recipients)} lack it: {lacking})")
        for r in got:
            at = arrivals[r][text]
            latencies.append(at - sent_ns)
            if sent_ns <= end:
                caught_up = max(caught_up, at)
    duplicates = sum(n - 1 for c in counts.values() for n in c.values() if n > 1)
    twice = [
        (m["user"], d) for m in members for d in m["deliveries"] if counts[m["user"]][d[0]] > 1
    ]
    twice_examples = [
        f"{d[0]} to {user} ({d[2]}, {(d[1] - start) / 1e9:+.3f} s)" for user, d in twice[:20]
    ]
    left = collections.Counter[str]()
    hit_shown = start  # until the last member was told a user of the failed node left
    for m in members:
        for event, user, at in m["presence"]:
            if at < start:
                continue
            kind = "hit" if user in hit else "wrong"
            left[f"{kind}_{'left' if event == 'room.left' else 'joined'}"] += 1
            if kind == "hit" and event == "room.left":
                hit_shown = max(hit_shown, at)
    shown_left = sum(1 for m in members for user in _last_left(m["presence"], start))
    views = [(m["user"], None if m.get("view") is None else set(m["view"])) for m in members]
    absent = [(who, u) for who, view in views if view is not None for u in users if u not in view]
    reconnects = [o for m in members for o in m["opens"] if o["reconnect"]]
    refused = [f"{o['node']}: {o['reason']}" for o in reconnects if not o["resumed"]]
    return {
        "timed_out": raw["timed_out"],
        "sent": len(raw["sent"]),
        "acked": len(raw["sent"]) - unacked,
        "unacked": unacked,
        "unacked_arrived": unacked_arrived,
        "expected": expected,
        "lost": lost_during + lost_after,
        "lost_during": lost_during,
        "lost_after": lost_after,
        "lost_examples": examples,
        "duplicates": duplicates,
        "duplicate_examples": twice_examples,
        "wrong_left": left["wrong_left"],
        "wrong_joined": left["wrong_joined"],
        "hit_left": left["hit_left"],
        "hit_joined": left["hit_joined"],
        "shown_left_at_end": shown_left,
        "absent_at_end": len(absent),
        "absent_examples": [f"{u} not in {who}'s view" for who, u in absent[:10]],
        "views_failed": sum(1 for _who, view in views if view is None),
        "reconnects": len(reconnects),
        "resumed": len(reconnects) - len(refused),
        "refused_resumes": len(refused),
        "not_resumed": sorted(set(refused))[:5],
        "replayed": sum(o["replayed"] for o in reconnects),
        "resent": sum(o["resent"] for o in reconnects),
        "hit_shown_s": round((hit_shown - start) / 1e9, 3) if left["hit_left"] else None,
        "converged_s": round((converged - end) / 1e9, 3),
        "caught_up_s": round((caught_up - end) / 1e9, 3),
        "order_violations": _order_violations(members),
        "latency_ms": _stats.Summary.of_ns(latencies).as_dict(),
        "collect_s": raw["collect_s"],
    }


def _last_left(presence: list[list[Any]], start: int) -> list[str]:
    """The users a member was last told (since ``start``) had left: it shows them gone."""
    last: dict[str, str] = {}
    for event, user, at in presence:
        if at >= start:
            last[user] = event
    return [user for user, event in last.items() if event == "room.left"]


def _order_violations(members: list[dict[str, Any]]) -> int:
    """Members whose room messages contradict the longest member's order."""
    orders = [[d[0] for d in m["deliveries"] if d[2] == "room"] for m in members]
    if not orders:
        return 0
    longest = max(orders, key=lambda order: len(order))
    reference = {text: i for i, text in enumerate(longest)}
    bad = 0
    for order in orders:
        ranks = [reference[t] for t in order if t in reference]
        bad += ranks != sorted(ranks)
    return bad

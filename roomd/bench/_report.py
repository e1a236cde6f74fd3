"""The benchmark's report: targets, the printed tables, and the JSON document.

The targets (docs/performance.md) are stated for the default sizes and settings (5 nodes and
a broker, 500 receivers ...). With others the verdicts are still printed, marked as not
comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import attrs

from . import _cost, _stats
from ._workloads import FAULT_WORKLOADS, SESSION_WORKLOADS, WORKLOADS

Verdict = tuple[str, bool | None]  # (what was measured against the target, met?)


@attrs.frozen
class Target:
    text: str
    check: Callable[[dict[str, Any]], Verdict]


def _clean(r: dict[str, Any]) -> bool:
    return not r.get("timed_out") and r.get("lost") == 0 and r.get("duplicates") == 0


def _ms(r: dict[str, Any], which: str, q: str) -> float:
    value = r.get("latency_ms", {}).get(which, {}).get(q)
    return math.nan if value is None else float(value)


def _w1_rate(r: dict[str, Any]) -> Verdict:
    p99 = _ms(r, "all", "p99")
    return f"lost {r['lost']}, dup {r['duplicates']}, p99 {p99:.1f} ms", _clean(r) and p99 <= 25


def _w1_burst(r: dict[str, Any]) -> Verdict:
    rate = r["deliveries_per_s"]
    return f"{rate:,.0f} deliveries/s, lost {r['lost']}", _clean(r) and rate >= 120_000


def _w2_rate(r: dict[str, Any]) -> Verdict:
    p50, p99 = _ms(r, "all", "p50"), _ms(r, "all", "p99")
    text = f"lost {r['lost']}, p50 {p50:.2f} ms, p99 {p99:.1f} ms"
    return text, _clean(r) and p50 <= 2 and p99 <= 15


def _w2_burst(r: dict[str, Any]) -> Verdict:
    rate = r["deliveries_per_s"]
    return f"{rate:,.0f} deliveries/s, lost {r['lost']}", _clean(r) and rate >= 30_000


def _w3_idle(r: dict[str, Any]) -> Verdict:
    kb = r.get("rss_per_connection_kb")
    opened = r["opened_per_s"]
    kb_text = "n/a" if kb is None else f"{kb:.1f} KB"
    text = f"{kb_text}/conn, {opened:,.0f} opened/s, alive {r['alive_after_hold']:,}"
    met = kb is not None and kb <= 8 and opened >= 3000 and bool(r["all_alive"])
    return text, met


def _sessions(r: dict[str, Any]) -> Verdict:
    text = f"lost {r['lost']}, dup {r['duplicates']}, not resumed {r['refused_resumes']}"
    return text, _clean(r) and r["refused_resumes"] == 0


SESSION_TARGET: Final = Target("0 lost, 0 duplicated, every reconnect resumed", _sessions)


def _faults(r: dict[str, Any]) -> Verdict:
    wrong = r["wrong_left"] + r["wrong_joined"]
    absent = r.get("absent_at_end", 0)  # (a run stored before it was measured: 0)
    unread = r.get("views_failed", 0)  # (views not read: nothing says every member is in them)
    text = f"lost {r['lost']}, dup {r['duplicates']}, wrong presence {wrong}, absent {absent}"
    if unread:
        text += f", views unread {unread}"
    return text, _clean(r) and wrong == 0 and absent == 0 and unread == 0


FAULT_TARGET: Final = Target(
    "0 lost, 0 duplicated, no wrong presence push, every member in every view at the end",
    _faults,
)

TARGETS: Final[dict[str, Target]] = {
    "w1-rate": Target("0 lost, p99 of all deliveries <= 25 ms", _w1_rate),
    "w1-burst": Target(">= 120,000 deliveries/s, 0 lost", _w1_burst),
    "w2-rate": Target("0 lost, p50 <= 2 ms, p99 <= 15 ms", _w2_rate),
    "w2-burst": Target(">= 30,000 deliveries/s, 0 lost", _w2_burst),
    "w3-idle": Target("<= 8 KB RSS/conn, >= 3,000 opened/s, all alive", _w3_idle),
    "resume": SESSION_TARGET,
    "drain": SESSION_TARGET,
    "crash": SESSION_TARGET,
    **dict.fromkeys(FAULT_WORKLOADS, FAULT_TARGET),
}


def add_verdicts(results: dict[str, dict[str, Any]]) -> None:
    for name, result in results.items():
        if name not in TARGETS or "skipped" in result:
            continue
        if "error" in result:
            result["target"] = {"text": TARGETS[name].text, "measured": "failed", "met": False}
            continue
        target = TARGETS[name]
        measured, met = target.check(result)
        result["target"] = {"text": target.text, "measured": measured, "met": met}


# Text ------------------------------------------------------------------------------------------


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}"


def _lat(summary: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = []
    for key in keys:
        value = summary.get(key)
        parts.append("-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}")
    return "/".join(parts)


def _cpu(cpu: dict[str, Any]) -> str:
    return "/".join(
        _n(cpu.get(k)) if cpu.get(k) is None else f"{cpu[k]:.2f}"
        for k in ("nodes", "broker", "drivers")
    )


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for index, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _bus_of(meta: dict[str, Any]) -> str:
    if not meta["local"]:
        return " (--urls)"
    return " in a mesh (no broker)" if meta.get("mesh") else " + broker"


def render(document: dict[str, Any]) -> str:
    """The human-readable report of a run."""
    meta = document["run"]
    results: dict[str, dict[str, Any]] = document["results"]
    lines = [
        f"roomd bench: {meta['nodes']} node(s){_bus_of(meta)}, "
        f"{'W1 and W2 sending volatile pushes, ' if meta.get('volatile') else ''}"
        f"{meta['drivers']} driver(s), {meta['cpus']} CPUs, load average "
        f"{_load(meta['load_start'])} at start, {_load(meta['load_end'])} at end",
        f"command: {meta['command']}   (revision {meta.get('revision') or 'unknown'}, "
        f"{meta['started']})",
        "",
    ]
    rows = [
        [
            "workload",
            "sent",
            "delivered/expected",
            "lost",
            "dup",
            "deliveries/s",
            "all p50/p99/max ms",
            "first p50/p99",
            "last p50/p99",
            "CPU s nodes/broker/drv",
            "wall s",
        ]
    ]
    for name, r in results.items():
        if not _is_phase(name) or "error" in r:
            continue
        lat = r["latency_ms"]
        flag = " TIMEOUT" if r["timed_out"] else ""
        rows.append(
            [
                name + flag,
                _n(r["sent"]),
                f"{r['received']:,}/{r['expected']:,}",
                _n(r["lost"]),
                _n(r["duplicates"]),
                _n(r["deliveries_per_s"]),
                _lat(lat["all"], ("p50", "p99", "max")),
                _lat(lat["first"], ("p50", "p99")),
                _lat(lat["last"], ("p50", "p99")),
                _cpu(r["cpu_s"]),
                f"{r['wall_s']:.2f}",
            ]
        )
    if len(rows) > 1:
        lines += _table(rows)
    for name in ("w3-idle", "w3-idle-x10"):
        w3 = results.get(name)
        if w3 is None or "error" in w3:
            continue
        kb = w3["rss_per_connection_kb"]
        hs = w3["setup"]["handshake_ms"]
        lines += [
            "",
            f"{name}: {w3['opened']:,}/{w3['connections']:,} opened in "
            f"{w3['setup']['seconds'] or 0:.2f} s ({_n(w3['opened_per_s'])}/s, handshake p50/p99 "
            f"{_lat(hs, ('p50', 'p99'))} ms); node RSS "
            f"{'n/a' if kb is None else f'{kb:+.2f} KB'} per connection; "
            f"{w3['alive_after_hold']:,} alive after {w3['held_s']:g} s "
            f"({w3['dropped_during_hold']} dropped); "
            f"CPU s nodes/broker/drv opening {_cpu(w3['cpu_s']['open'])}",
        ]
    costs = _cost_lines(results)
    if costs:
        lines += ["", *costs]
    scaling = _cost.scaling(results)
    if scaling:
        lines += ["", *_scaling_lines(scaling)]
    bus = results.get("bus")
    if bus is not None and "paths" in bus:
        lines += [*([""] if lines[-1] else []), *_bus_lines(bus)]
    micro = results.get("micro")
    if micro is not None and "error" not in micro:
        lines += [*([""] if lines[-1] else []), _micro_line(micro)]
    sessions = {k: r for k, r in results.items() if k in SESSION_WORKLOADS and "lost" in r}
    if sessions:
        lines += [*([""] if lines[-1] else []), *_session_lines(sessions)]
    faults = {k: r for k, r in results.items() if k in FAULT_WORKLOADS and "lost" in r}
    if faults:
        lines += [*([""] if lines[-1] else []), *_fault_lines(faults)]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name}: FAILED: {r['error']}")
        if "skipped" in r:
            lines.append(f"{name}: skipped: {r['skipped']}")
    for name, r in results.items():
        profile = r.get("profile")
        if profile:
            lines += ["", f"{name}: node CPU by function ({profile['samples']:,} samples, self %):"]
            lines += [f"  {pct:5.1f}  {fn}" for fn, pct in profile["self"][:8]]
            inclusive = profile["inclusive"][:12]
            shown = ", ".join(f"{fn.split(' ')[0]} {pct:.0f}" for fn, pct in inclusive)
            lines.append(f"  inclusive %: {shown}")
    problems = _problems(results)
    if problems:
        lines += ["", *problems]
    rss = _last_rss(results)
    if rss:
        lines += [
            "",
            "node RSS MB (end of last phase): " + ", ".join(f"{k} {_n(v)}" for k, v in rss.items()),
        ]
    if any("target" in r for r in results.values()):
        lines += [
            "",
            "targets"
            + (
                ""
                if meta["default_sizes"]
                else " (stated for the default sizes and settings; this run's differ)"
            )
            + ":",
        ]
    for name, r in results.items():
        target = r.get("target")
        if target is None:
            continue
        verdict = {True: "met", False: "MISSED", None: "n/a"}[target["met"]]
        lines.append(f"  {name:<9} {verdict:<7} {target['text']:<48} {target['measured']}")
    return "\n".join(lines)


def _is_phase(name: str) -> bool:
    """Whether a workload is one of the measured WebSocket phases (W1, W2, and at x10)."""
    return name.startswith(("w1-", "w2-"))


def _is_idle(name: str) -> bool:
    """Whether a workload is W3 (or W3 x10)."""
    return name.startswith("w3-")


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def _cost_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """What the server's work cost: W1 and W2 per delivery and per message, W3 per
    connection opened and held."""
    rows = [
        [
            "server cost",
            "server CPU s",
            "us/delivery",
            "us/message",
            "driver us/delivery",
        ]
    ]
    for name, r in results.items():
        if not _is_phase(name) or "cost" not in r:
            continue
        c = r["cost"]
        rows.append(
            [
                name,
                "-" if c["server_cpu_s"] is None else f"{c['server_cpu_s']:.2f}",
                _us(c["us_per_delivery"]),
                _us(c["us_per_message"]),
                _us(c["driver_us_per_delivery"]),
            ]
        )
    lines = _table(rows) if len(rows) > 1 else []
    for name, r in results.items():
        if not _is_idle(name) or "cost" not in r:
            continue
        c = r["cost"]
        pct = c["idle_cpu_pct"]
        lines.append(
            f"{name}: {_us(c['ms_per_connection'])} ms of server CPU per connection opened; "
            f"held idle: {'-' if pct is None else f'{pct:.2f}'}% of a core for "
            f"{r['opened']:,} connections ({_us(c['idle_us_per_connection_s'])} us per "
            f"connection per s), {_us(c['kib_per_connection'])} KiB per connection"
        )
    if lines:
        lines.append(
            "server = nodes + broker (their CPU-time clocks); a W1 message is one delivery per "
            "receiver, a W2 message one delivery"
        )
    return lines


def _scaling_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The scaling table: each x10 workload's cost against its base workload's."""
    table = [["scaling", "cost", "base size", "x10 size", "at base", "at x10", "x10 / base"]]
    for row in rows:
        table.append(
            [
                row["workload"] + ("" if row.get("exact", True) else " *"),
                row["unit"],
                f"{_n(row['base_size'])} {row['size_unit'] or ''}".rstrip(),
                _n(row["x10_size"]),
                _us(row["base"]),
                _us(row["x10"]),
                "-" if row["ratio"] is None else f"{row['ratio']:.2f}",
            ]
        )
    notes = []
    if not all(row.get("exact", True) for row in rows):
        notes = ["* a run of this workload lost, duplicated or dropped something: see above"]
    return [*_table(table), *notes]


_BUS_CPU: Final = ("broker", "pub", "sub", "nodes")


def _bus_cpu(cpu: dict[str, Any]) -> str:
    return "/".join("-" if cpu.get(k) is None else f"{cpu[k]:.2f}" for k in _BUS_CPU)


def _micro_line(micro: dict[str, Any]) -> str:
    return (
        f"micro (in process, us per message): direct send {micro['direct_us']:.2f}, "
        f"room send to 100 members {micro['room100_us']:.2f}, decoding a send "
        f"{micro['decode_us']:.2f}; a direct message across three nodes (memory bus) "
        f"{micro['cluster_direct_burst_us']:.1f} in bursts, "
        f"{micro['cluster_direct_one_us']:.1f} one at a time; held: a detached session "
        f"{micro['detached_session_bytes'] / 1024:.2f} KB, a message in history "
        f"{micro['history_entry_bytes']:.0f} B "
        f"(its push body {micro['history_message_bytes']:.0f} B); this machine's charges: a "
        f"ZeroMQ hop {micro['zmq_hop_one_us']:.1f} us of CPU one at a time, "
        f"{micro['zmq_hop_burst_us']:.1f} in bursts; a loopback send() "
        f"{micro['send_reader_asleep_us']:.1f} to a sleeping reader, "
        f"{micro['send_reader_awake_us']:.1f} to a busy one{_trio_part(micro)}{_wake_part(micro)}"
    )


def _wake_part(micro: dict[str, Any]) -> str:
    if "wake_trio_idle_us" not in micro:  # (a run stored before it was measured)
        return ""
    return (
        f"; a wake-up after 2 ms asleep {micro['wake_trio_idle_us']:.1f} us of CPU in Trio, "
        f"{micro['wake_epoll_idle_us']:.1f} from a plain epoll (back to back "
        f"{micro['wake_trio_busy_us']:.1f} and {micro['wake_epoll_busy_us']:.1f}), and the same "
        f"Python {micro['python_idle_us']:.1f} us right after one against "
        f"{micro['python_busy_us']:.1f} back to back"
    )


def _trio_part(micro: dict[str, Any]) -> str:
    if "trio_checkpoint_us" not in micro:  # (a run stored before it was measured)
        return ""
    return (
        f"; Trio: a checkpoint {micro['trio_checkpoint_us']:.2f} us, a task "
        f"{micro['trio_task_us']:.2f}, a nursery {micro['trio_nursery_us']:.2f}, a cancel "
        f"scope {micro['trio_scope_us']:.2f}, a wake-up by Event "
        f"{micro['trio_event_wake_us']:.2f}, wait_readable {micro['trio_wait_readable_us']:.2f} "
        f"per ready socket (an epoll set of our own: {micro['epoll_ready_us']:.2f})"
    )


def _bus_lines(bus: dict[str, Any]) -> list[str]:
    """The bus workload: one row per path (through the broker, direct)."""
    rows = [
        [
            "bus path",
            "sent",
            "received",
            "lost",
            "dup",
            "stray",
            "messages/s",
            "MB/s",
            "sent/s",
            "mean batch",
            "CPU s broker/pub/sub/nodes",
            "wall s",
        ]
    ]
    for path, r in bus["paths"].items():
        flag = " TIMEOUT" if r["timed_out"] else ""
        mb = r["messages_per_s"] * r["message_bytes"] / 1e6
        rows.append(
            [
                path + flag,
                _n(r["sent"]),
                _n(r["received"]),
                _n(r["lost"]),
                _n(r["duplicates"]),
                _n(r["stray"]),
                _n(r["messages_per_s"]),
                f"{mb:.1f}",
                _n(r["sent_per_s"]),
                _n(r["mean_batch"]),
                _bus_cpu(r["cpu_s"]),
                f"{r['wall_s']:.2f}",
            ]
        )
    window = f"at most {bus['window']:,} unacknowledged" if bus["window"] else "no window"
    security = "CurveZMQ" if bus.get("secure") else "plaintext"
    return [
        *_table(rows),
        f"bus: {bus['messages']:,} messages of {bus['message_bytes']:.0f} bytes (users pushes) "
        f"from a PUB process to a SUB process ({security}), {window}, a checkpoint every "
        f"{bus['checkpoint']} sends; messages/s = received / (last arrival - first send)",
    ]


_SESSION_HEAD: Final = [
    "workload",
    "receivers",
    "acked/sent",
    "lost",
    "dup",
    "unacked",
    "resumed/reconnects",
    "replayed",
    "resume p50/p99/max ms",
    "back s",
    "empty s",
    "p99 ms all/during",
]


def _session_row(name: str, r: dict[str, Any]) -> list[str]:
    resume = r["resume_ms"]
    fault = r.get("fault_s", {})
    during = r.get("latency_during_ms", {}).get("p99")
    unacked = f"{r['unacked']} ({r['unacked_delivered']} arrived)" if r["unacked"] else "0"
    return [
        name + (" TIMEOUT" if r["timed_out"] else ""),
        f"{r['receivers']} ({r['affected']} hit)",
        f"{_n(r['acked'])}/{_n(r['sent'])}",
        _n(r["lost"]),
        _n(r["duplicates"]),
        unacked,
        f"{r['resumed']}/{r['reconnects']}",
        _n(r["replayed"]),
        _lat(resume, ("p50", "p99", "max")),
        _n(fault.get("all_back")) if fault else _n(_ms_to_s(r.get("back_ms", {}).get("max"))),
        _n(fault.get("node_empty")) if fault else "-",
        f"{_n(r['latency_ms']['all']['p99'])}/{_n(during)}",
    ]


def _ms_to_s(value: float | None) -> float | None:
    return None if value is None else round(value / 1000, 3)


def _session_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The session workloads: what was lost, how the reconnects went, what the fault cost."""
    rows = [_SESSION_HEAD, *(_session_row(name, r) for name, r in results.items())]
    return [
        *_table(rows),
        "acked: sends acknowledged (lost and dup count their deliveries); hit: receivers "
        "dropped (resume) or on the drained/killed node; resume: from the TCP connect that "
        "resumed to the last replayed push; back: fault (resume: drop) to the last hit "
        "client's replay; empty: fault to the last hit client leaving its node",
    ]


_FAULT_HEAD: Final = [
    "fault",
    "acked/sent",
    "lost during/after",
    "dup",
    "unacked",
    "wrong left/joined",
    "hit left/joined",
    "resumed/reconnects",
    "hit shown s",
    "converged s",
    "caught up s",
    "p99 ms",
]


def _fault_row(name: str, r: dict[str, Any]) -> list[str]:
    unacked = f"{_n(r['unacked'])} ({_n(r['unacked_arrived'])} arrived)" if r["unacked"] else "0"
    return [
        name + (" TIMEOUT" if r["timed_out"] else ""),
        f"{_n(r['acked'])}/{_n(r['sent'])}",
        f"{_n(r['lost_during'])} / {_n(r['lost_after'])}",
        _n(r["duplicates"]),
        unacked,
        f"{_n(r['wrong_left'])}/{_n(r['wrong_joined'])}",
        f"{_n(r['hit_left'])}/{_n(r['hit_joined'])}",
        f"{_n(r['resumed'])}/{_n(r['reconnects'])}",
        _n(r.get("hit_shown_s")),
        _n(r["converged_s"]),
        _n(r["caught_up_s"]),
        _n(r["latency_ms"]["p99"]),
    ]


def _fault_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The fault workloads: what each fault cost."""
    rows = [_FAULT_HEAD, *(_fault_row(name, r) for name, r in results.items())]
    return [
        *_table(rows),
        "lost: deliveries of acknowledged messages missing (during: sent from the fault until "
        "the cluster converged); wrong: room.left/room.joined pushes about users who never "
        "left; hit: about the users of the node that failed; hit shown: fault's start to the "
        "last room.left about them; converged: fault's end to the last presence push or "
        "reconnect; caught up: to the last delivery of what was sent until the fault's end",
    ]


def _fault_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure of a fault workload; losses, duplicates and wrong presence
    pushes of the worst run (each run's in ``values``)."""
    out: dict[str, Any] = {"runs": len(runs), "timed_out": any(r["timed_out"] for r in runs)}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = _median([r[key] for r in runs])
    out["latency_ms"] = {q: _median([r["latency_ms"][q] for r in runs]) for q in _QS}
    worst = ("lost", "lost_during", "lost_after", "duplicates", "wrong_left", "wrong_joined")
    out.update({k: max(r[k] for r in runs) for k in (*worst, "refused_resumes")})
    out["absent_at_end"] = max(r.get("absent_at_end", 0) for r in runs)
    out["views_failed"] = max(r.get("views_failed", 0) for r in runs)
    out["values"] = {k: [r[k] for r in runs] for k in (*worst, "converged_s", "hit_left")}
    return out


def _load(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _problems(results: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, r in results.items():
        for key in ("errors", "closes", "failures"):
            if r.get(key):
                out.append(f"{name}: {key}: {r[key]}")
        for key in (
            "unexpected",
            "stray",
            "missing_receivers",
            "undelivered_messages",
            "dead_nodes",
        ):
            if r.get(key):
                out.append(f"{name}: {key}: {r[key]}")
        if r.get("lost_examples"):
            out.append(f"{name}: lost (receiver: message numbers): {r['lost_examples']}")
        for path, p in r.get("paths", {}).items():
            for key in ("unexpected", "refused", "stalled"):
                if p.get(key):
                    out.append(f"{name} {path}: {key}: {p[key]}")
            if p.get("lost_examples"):
                out.append(f"{name} {path}: lost (first message numbers): {p['lost_examples']}")
        if r.get("error_messages"):
            out.append(f"{name}: error frames: {r['error_messages']}")
        setup = r.get("setup", {})
        if setup.get("failures"):
            out.append(f"{name}: failed opens: {setup['failures']}")
    return out


def _last_rss(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for r in reversed(list(results.values())):
        rss = r.get("rss_mb")
        if isinstance(rss, dict) and "held" in rss:
            return dict(rss["held"])
        if isinstance(rss, dict) and rss:
            return dict(rss)
    return {}


# Medians of several runs ------------------------------------------------------------------------

_LATENCIES: Final = (
    ("all", "p50"),
    ("all", "p99"),
    ("all", "max"),
    ("first", "p50"),
    ("first", "p99"),
    ("last", "p50"),
    ("last", "p99"),
)


def medians(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per workload, the median of each figure over runs; losses, duplicates and timeouts are
    the worst of any run (a target of 0 lost is met only if every run lost nothing)."""
    out: dict[str, dict[str, Any]] = {}
    measured = [n for n in WORKLOADS if n in TARGETS or n in _cost.BASE_OF]
    names = [n for n in measured if any(n in d["results"] for d in documents)]
    bus = [d["results"]["bus"] for d in documents if "paths" in d["results"].get("bus", {})]
    if bus:
        out["bus"] = _bus_medians(bus)
    elif any("bus" in d["results"] for d in documents):
        skipped = [d["results"]["bus"] for d in documents if "skipped" in d["results"]["bus"]]
        out["bus"] = skipped[0] if skipped else {"error": "failed in every run"}
    micro = [
        d["results"]["micro"] for d in documents if "direct_us" in d["results"].get("micro", {})
    ]
    if micro:
        out["micro"] = {k: _median([m[k] for m in micro]) for k in micro[0]}
    for name in names:
        runs = [d["results"][name] for d in documents if "error" not in d["results"].get(name, {})]
        runs = [r for r in runs if "skipped" not in r]
        if not runs:
            out[name] = {"error": "failed or skipped in every run"}
            continue
        if name in SESSION_WORKLOADS:
            out[name] = _session_medians(runs)
        elif name in FAULT_WORKLOADS:
            out[name] = _fault_medians(runs)
        elif _is_idle(name):
            out[name] = {
                "runs": len(runs),
                "size": runs[0].get("size"),
                "size_unit": runs[0].get("size_unit"),
                "opened": round(_median([r.get("opened") for r in runs]) or 0),
                "opened_per_s": _median([r["opened_per_s"] for r in runs]),
                "rss_per_connection_kb": _median([r["rss_per_connection_kb"] for r in runs]),
                "alive_after_hold": min(r["alive_after_hold"] for r in runs),
                "all_alive": all(r["all_alive"] for r in runs),
                "values": {
                    "opened_per_s": [r["opened_per_s"] for r in runs],
                    "rss_per_connection_kb": [r["rss_per_connection_kb"] for r in runs],
                },
                **_cost_medians(runs),
            }
        else:
            latency: dict[str, dict[str, float | None]] = {"all": {}, "first": {}, "last": {}}
            for which, q in _LATENCIES:
                latency[which][q] = _median([r["latency_ms"][which][q] for r in runs])
            out[name] = {
                "runs": len(runs),
                "size": runs[0].get("size"),
                "size_unit": runs[0].get("size_unit"),
                "deliveries_per_s": _median([r["deliveries_per_s"] for r in runs]),
                "latency_ms": latency,
                "lost": max(r["lost"] for r in runs),
                "duplicates": max(r["duplicates"] for r in runs),
                "timed_out": any(r["timed_out"] for r in runs),
                "cpu_s": {
                    k: _median([r["cpu_s"][k] for r in runs])
                    for k in ("nodes", "broker", "drivers")
                },
                "values": {
                    "deliveries_per_s": [r["deliveries_per_s"] for r in runs],
                    "p99_ms": [r["latency_ms"]["all"]["p99"] for r in runs],
                },
                **_cost_medians(runs),
            }
        if name in TARGETS:
            verdict, met = TARGETS[name].check(out[name])
            out[name]["target"] = {"text": TARGETS[name].text, "measured": verdict, "met": met}
    return out


def _cost_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each cost figure over runs, and each run's (``cost_values``)."""
    costs = [r["cost"] for r in runs if "cost" in r]
    if not costs:
        return {}
    return {
        "cost": {k: _median([c.get(k) for c in costs]) for k in costs[0]},
        "cost_values": {k: [c.get(k) for c in costs] for k in costs[0]},
    }


def _session_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure of a session workload; losses, duplicates, reconnects not
    resumed and unacknowledged sends of the worst run."""
    worst = ("lost", "duplicates", "refused_resumes", "unacked", "unacked_delivered")
    out: dict[str, Any] = {k: max(r[k] for r in runs) for k in worst}
    out["timed_out"] = any(r["timed_out"] for r in runs)
    out["runs"] = len(runs)
    for k in ("receivers", "affected", "sent", "acked", "resumed", "reconnects", "replayed"):
        out[k] = round(_median([r[k] for r in runs]) or 0)
    out["resume_ms"] = {q: _median([r["resume_ms"][q] for r in runs]) for q in _QS}
    out["latency_ms"] = {
        "all": {q: _median([r["latency_ms"]["all"][q] for r in runs]) for q in _QS}
    }
    if "fault_s" in runs[0]:
        out["fault_s"] = {k: _median([r["fault_s"][k] for r in runs]) for k in runs[0]["fault_s"]}
        out["latency_during_ms"] = {
            q: _median([r["latency_during_ms"][q] for r in runs]) for q in _QS
        }
    if "back_ms" in runs[0]:
        out["back_ms"] = {q: _median([r["back_ms"][q] for r in runs]) for q in _QS}
    out["values"] = {
        "resume_p99_ms": [r["resume_ms"]["p99"] for r in runs],
        "fault_s": [r.get("fault_s") for r in runs],
        "p99_during_ms": [r.get("latency_during_ms", {}).get("p99") for r in runs],
    }
    return out


_QS: Final = ("p50", "p99", "max")


def _bus_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per path, the median rate and CPU; losses, duplicates and timeouts of the worst run."""
    paths: dict[str, dict[str, Any]] = {}
    for path in runs[0]["paths"]:
        of = [r["paths"][path] for r in runs if path in r["paths"]]
        paths[path] = {
            "messages_per_s": _median([p["messages_per_s"] for p in of]),
            "lost": max(p["lost"] for p in of),
            "duplicates": max(p["duplicates"] for p in of),
            "timed_out": any(p["timed_out"] for p in of),
            "cpu_s": {k: _median([p["cpu_s"][k] for p in of]) for k in _BUS_CPU},
            "values": {"messages_per_s": [p["messages_per_s"] for p in of]},
        }
    return {
        "runs": len(runs),
        "messages_per_s": paths["broker"]["messages_per_s"],
        "lost": max(r["lost"] for r in runs),
        "duplicates": max(r["duplicates"] for r in runs),
        "timed_out": any(r["timed_out"] for r in runs),
        "paths": paths,
    }


def _median(values: list[Any]) -> float | None:
    clean = [float(v) for v in values if v is not None]
    if not clean:
        return None
    result = _stats.median(clean)
    return None if math.isnan(result) else round(result, 3)


def render_medians(table: dict[str, dict[str, Any]], documents: list[dict[str, Any]]) -> str:
    """The table of medians, with each target's verdict on them."""
    lines = [f"medians of {len(documents)} runs (lost, dup: worst run):"]
    rows = [
        [
            "workload",
            "deliveries/s",
            "all p50/p99/max ms",
            "first p50/p99",
            "last p50/p99",
            "lost",
            "dup",
            "CPU s nodes/broker/drv",
        ]
    ]
    for name, m in table.items():
        if not _is_phase(name) or "error" in m:
            continue
        lat = m["latency_ms"]
        rows.append(
            [
                name,
                _n(m["deliveries_per_s"]),
                _lat(lat["all"], ("p50", "p99", "max")),
                _lat(lat["first"], ("p50", "p99")),
                _lat(lat["last"], ("p50", "p99")),
                _n(m["lost"]),
                _n(m["duplicates"]),
                _cpu(m["cpu_s"]),
            ]
        )
    if len(rows) > 1:
        lines += _table(rows)
    for name in ("w3-idle", "w3-idle-x10"):
        w3 = table.get(name)
        if w3 is None or "error" in w3:
            continue
        kb = w3["rss_per_connection_kb"]
        lines.append(
            f"{name}: {_n(w3['opened_per_s'])} opened/s, node RSS "
            f"{'n/a' if kb is None else f'{kb:.2f} KB'} per connection, "
            f"all alive in every run: {w3['all_alive']}"
        )
    lines += _cost_lines(table)
    scaling = _cost.scaling(table)
    if scaling:
        lines += _scaling_lines(scaling)
    bus = table.get("bus")
    if bus is not None and "paths" in bus:
        rows = [
            [
                "bus path",
                "messages/s",
                "runs' messages/s",
                "lost",
                "dup",
                "CPU s broker/pub/sub/nodes",
            ]
        ]
        for path, p in bus["paths"].items():
            values = ", ".join(_n(v) for v in p["values"]["messages_per_s"])
            rows.append(
                [
                    path + (" TIMEOUT" if p["timed_out"] else ""),
                    _n(p["messages_per_s"]),
                    values,
                    _n(p["lost"]),
                    _n(p["duplicates"]),
                    _bus_cpu(p["cpu_s"]),
                ]
            )
        lines += _table(rows)
    micro = table.get("micro")
    if micro is not None:
        lines.append(_micro_line(micro))
    sessions = {k: m for k, m in table.items() if k in SESSION_WORKLOADS and "lost" in m}
    if sessions:
        lines += _session_lines(sessions)
    faults = {k: m for k, m in table.items() if k in FAULT_WORKLOADS and "lost" in m}
    if faults:
        lines += _fault_lines(faults)
    if any("target" in m for m in table.values()):
        lines.append("targets (on the medians):")
    for name, m in table.items():
        if "target" in m:
            t = m["target"]
            verdict = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            lines.append(f"  {name:<9} {verdict:<7} {t['text']:<48} {t['measured']}")
    return "\n".join(lines)

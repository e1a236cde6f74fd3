"""What the server's work cost, in units that compare from run to run and from size to size.

The server is the nodes and the broker together (their CPU read from /proc around each phase).
A W1 phase is judged per delivery (one broadcast is as many deliveries as the room has
receivers), a W2 phase per message (each message is one delivery), W3 per connection opened,
and the held idle connections by the share of a core they keep busy and the memory each holds.
Everything here is pure: it reads results, it measures nothing. ``None`` stands for a figure
that cannot be known (the CPU of a cluster given with ``--urls``, a phase that delivered
nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# The x10 workloads and the base workload each is compared with.
BASE_OF: Final = {
    "w1-rate-x10": "w1-rate",
    "w1-burst-x10": "w1-burst",
    "w2-rate-x10": "w2-rate",
    "w2-burst-x10": "w2-burst",
    "w3-idle-x10": "w3-idle",
}

# Per kind of workload: the figures of its ``cost`` the scaling table compares, and their units.
SCALED_FIGURES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "w1": (("us_per_delivery", "us per delivery"),),
    "w2": (("us_per_message", "us per message"),),
    "w3": (
        ("ms_per_connection", "ms per connection opened"),
        ("idle_us_per_connection_s", "us per idle connection per s"),
        ("kib_per_connection", "KiB per idle connection"),
    ),
}


def _add(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _per(total: float | None, count: float, scale: float) -> float | None:
    """``total / count * scale``, rounded; ``None`` when either is unknown or nothing happened."""
    if total is None or count <= 0:
        return None
    return round(total / count * scale, 3)


def phase_cost(result: Mapping[str, Any]) -> dict[str, float | None]:
    """The cost of a W1 or W2 phase (or of a session workload's phase): server CPU seconds,
    and microseconds of it per delivery and per message sent; the drivers' per delivery."""
    cpu = result["cpu_s"]
    server = _add(cpu.get("nodes"), cpu.get("broker"))
    return {
        "server_cpu_s": None if server is None else round(server, 3),
        "us_per_delivery": _per(server, result["received"], 1e6),
        "us_per_message": _per(server, result["sent"], 1e6),
        "driver_us_per_delivery": _per(cpu.get("drivers"), result["received"], 1e6),
    }


def idle_cost(
    opened: int,
    cpu_open: Mapping[str, Any],
    cpu_hold: Mapping[str, Any],
    hold_s: float,
    kib_per_connection: float | None,
) -> dict[str, float | None]:
    """The cost of W3: server CPU per connection opened (milliseconds), the server's CPU while
    the connections were held (percent of one core, and microseconds per connection per
    second), and the memory per idle connection (KiB of the nodes' RSS)."""
    open_s = _add(cpu_open.get("nodes"), cpu_open.get("broker"))
    held = _add(cpu_hold.get("nodes"), cpu_hold.get("broker"))
    return {
        "open_cpu_s": None if open_s is None else round(open_s, 3),
        "ms_per_connection": _per(open_s, opened, 1e3),
        "idle_cpu_s": None if held is None else round(held, 3),
        "idle_cpu_pct": _per(held, hold_s, 100.0),
        "idle_us_per_connection_s": _per(held, hold_s * opened, 1e6),
        "kib_per_connection": kib_per_connection,
    }


def _kind(name: str) -> str:
    return name.split("-", 1)[0]


def exact(result: Mapping[str, Any]) -> bool:
    """Whether a W1, W2 or W3 result is whole: nothing lost, duplicated or timed out, every
    idle connection alive (a cost of a run that was not says little about the size)."""
    if "all_alive" in result:
        return bool(result["all_alive"])
    return not result.get("timed_out") and not result.get("lost") and not result.get("duplicates")


def scaling(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per figure of each x10 workload that ran with its base workload: the sizes,
    the cost at each, x10 over base (above 1: each unit costs more at the larger size), and
    whether both ran exactly (``exact``)."""
    rows: list[dict[str, Any]] = []
    for big, base in BASE_OF.items():
        x10, one = results.get(big), results.get(base)
        if x10 is None or one is None or "cost" not in x10 or "cost" not in one:
            continue
        for key, unit in SCALED_FIGURES[_kind(big)]:
            a, b = one["cost"].get(key), x10["cost"].get(key)
            rows.append(
                {
                    "workload": base,
                    "figure": key,
                    "unit": unit,
                    "size_unit": one.get("size_unit"),
                    "base_size": one.get("size"),
                    "x10_size": x10.get("size"),
                    "base": a,
                    "x10": b,
                    "ratio": None if a is None or b is None or a <= 0 else round(b / a, 2),
                    "exact": exact(one) and exact(x10),
                }
            )
    return rows

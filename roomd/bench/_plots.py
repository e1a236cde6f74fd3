"""``--plots DIR``: the run's figures as SVG files, written by hand.

``latency-<workload>.svg``: the distribution of delivery latency of each W1 and W2 phase (the
share of deliveries that arrived within a time, the time on a log scale), one curve per run.
``scaling.svg``: for each row of the scaling table, the cost per unit against the size (base
and x10). Both chart kinds are lines on a log or linear axis: a few dozen lines of SVG do them,
deterministic and a few KB each, with the text as text; a plotting library would add its whole
dependency tree to the development tools for that.

Everything here is pure but :func:`write`: it takes the run's documents, returns text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape

import attrs

COLORS: Final = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
FONT: Final = 'font-family="sans-serif" font-size="11"'
WIDTH: Final = 560
HEIGHT: Final = 340
MARGIN: Final = (56, 24, 34, 44)  # left, right, top, bottom


@attrs.frozen
class Series:
    name: str
    points: list[tuple[float, float]]
    color: str
    markers: bool = False


@attrs.frozen
class Axis:
    label: str
    low: float
    high: float
    log: bool = False

    def at(self, value: float, start: float, length: float) -> float:
        """Where ``value`` falls on an axis drawn from ``start`` over ``length`` pixels."""
        if self.log:
            low, high, value = math.log10(self.low), math.log10(self.high), math.log10(value)
        else:
            low, high = self.low, self.high
        return start + (value - low) / (high - low) * length

    def ticks(self) -> list[float]:
        if self.log:
            first, last = math.floor(math.log10(self.low)), math.ceil(math.log10(self.high))
            steps = (1, 2, 5) if last - first <= 3 else (1,)  # few decades: 1, 2, 5 of each
            values = [m * 10.0**k for k in range(first, last + 1) for m in steps]
            return [v for v in values if self.low <= v <= self.high]
        step = _nice_step((self.high - self.low) / 5)
        start = math.ceil(self.low / step) * step
        count = int((self.high - start) / step + 1e-9) + 1
        return [round(start + i * step, 12) for i in range(count)]


def _nice_step(raw: float) -> float:
    """The 1, 2 or 5 times a power of ten nearest above ``raw``."""
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


def log_range(values: Sequence[float]) -> tuple[float, float]:
    """Whole decades around the positive ``values`` (for a log axis)."""
    positive = [v for v in values if v > 0] or [1.0]
    low, high = min(positive), max(positive)
    low = 10.0 ** math.floor(math.log10(low))
    high = 10.0 ** math.ceil(math.log10(high))
    return (low, high * 10 if high <= low else high)


def chart(
    title: str,
    x: Axis,
    y: Axis,
    series: Sequence[Series],
    origin: tuple[float, float] = (0, 0),
    size: tuple[float, float] = (WIDTH, HEIGHT),
) -> list[str]:
    """The SVG elements of one chart whose top left corner is at ``origin``."""
    ox, oy = origin
    left, right, top, bottom = MARGIN
    px, py = ox + left, oy + top
    pw, ph = size[0] - left - right, size[1] - top - bottom
    out = [
        f'<text x="{ox + size[0] / 2:.1f}" y="{oy + 18:.1f}" text-anchor="middle" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<rect x="{px:.1f}" y="{py:.1f}" width="{pw:.1f}" height="{ph:.1f}" fill="none" '
        'stroke="#888"/>',
    ]
    for tick in x.ticks():
        tx = x.at(tick, px, pw)
        out.append(f'<line x1="{tx:.1f}" y1="{py:.1f}" x2="{tx:.1f}" y2="{py + ph:.1f}" '
                   'stroke="#ddd"/>')  # fmt: skip
        out.append(f'<text x="{tx:.1f}" y="{py + ph + 14:.1f}" text-anchor="middle">'
                   f"{_label(tick)}</text>")  # fmt: skip
    for tick in y.ticks():
        ty = y.at(tick, py + ph, -ph)
        out.append(f'<line x1="{px:.1f}" y1="{ty:.1f}" x2="{px + pw:.1f}" y2="{ty:.1f}" '
                   'stroke="#ddd"/>')  # fmt: skip
        out.append(f'<text x="{px - 4:.1f}" y="{ty + 4:.1f}" text-anchor="end">'
                   f"{_label(tick)}</text>")  # fmt: skip
    out.append(f'<text x="{px + pw / 2:.1f}" y="{oy + size[1] - 8:.1f}" text-anchor="middle">'
               f"{escape(x.label)}</text>")  # fmt: skip
    ly, lx = py + ph / 2, ox + 14
    out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 {lx:.1f} {ly:.1f})">{escape(y.label)}</text>')  # fmt: skip
    for index, s in enumerate(series):
        coords = [
            (x.at(max(a, x.low), px, pw), y.at(min(max(b, y.low), y.high), py + ph, -ph))
            for a, b in s.points
        ]
        if not coords:
            continue
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)
        out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" '
                   'stroke-width="1.6"/>')  # fmt: skip
        if s.markers:
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{s.color}"/>'
                    for a, b in coords]  # fmt: skip
        lx, ly = px + 8, py + 14 + 14 * index
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4:.1f}" x2="{lx + 16:.1f}" y2="{ly - 4:.1f}" '
                   f'stroke="{s.color}" stroke-width="2"/>')  # fmt: skip
        out.append(f'<text x="{lx + 20:.1f}" y="{ly:.1f}">{escape(s.name)}</text>')
    return out


def document(elements: Sequence[str], width: float, height: float) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" {FONT}>\n'
        f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(elements) + "\n</svg>\n"
    )


def latency_svg(name: str, runs: Sequence[dict[str, Any]]) -> str:
    """The latency distribution of workload ``name``: one curve per run's result."""
    curves = [r.get("latency_cdf_ms") or [] for r in runs]
    values = [ms for curve in curves for _, ms in curve]
    low, high = log_range(values)
    series = [
        Series(
            f"run {i + 1}" if len(runs) > 1 else name,
            [(ms, q) for q, ms in curve],
            COLORS[i % len(COLORS)],
        )
        for i, curve in enumerate(curves)
    ]
    first = runs[0]
    title = f"{name}: delivery latency ({first.get('received', 0):,} deliveries"
    title += f", {len(runs)} runs)" if len(runs) > 1 else ")"
    x = Axis("latency, ms (log scale)", low, high, log=True)
    y = Axis("% of deliveries within", 0, 100)
    return document(chart(title, x, y, series), WIDTH, HEIGHT)


def scaling_svg(rows: Sequence[dict[str, Any]]) -> str:
    """One small chart per row of the scaling table: cost against size, base and x10."""
    columns = 2
    width, height = WIDTH / 1.25, HEIGHT / 1.25
    elements: list[str] = []
    for index, row in enumerate(rows):
        points = [
            (float(row[size]), float(row[cost]))
            for size, cost in (("base_size", "base"), ("x10_size", "x10"))
            if row[size] and row[cost] is not None
        ]
        sizes = [p[0] for p in points] or [1.0]
        top = max([p[1] for p in points] or [1.0]) * 1.15 or 1.0
        x = Axis(f"{row['size_unit'] or 'size'} (log scale)", *log_range(sizes), log=True)
        y = Axis(row["unit"], 0, top)
        ratio = "" if row["ratio"] is None else f"  (x10 / base {row['ratio']:.2f})"
        ratio += "" if row.get("exact", True) else " *not exact*"
        series = [Series(row["workload"], points, COLORS[index % len(COLORS)], markers=True)]
        origin = ((index % columns) * width, (index // columns) * height)
        title = f"{row['workload']}: {row['unit']}{ratio}"
        elements += chart(title, x, y, series, origin, (width, height))
    lines = max(1, math.ceil(len(rows) / columns))
    return document(elements, columns * width, lines * height)


def write(
    directory: str | Path, documents: Sequence[dict[str, Any]], scaling: Sequence[dict[str, Any]]
) -> list[Path]:
    """Write the run's plots in ``directory`` (made if missing); the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names: list[str] = []
    for d in documents:
        names += [n for n in d["results"] if n not in names]
    for name in names:
        runs = [d["results"][name] for d in documents if name in d["results"]]
        runs = [r for r in runs if r.get("latency_cdf_ms")]
        if not runs or not name.startswith(("w1-", "w2-")):
            continue
        path = out / f"latency-{name}.svg"
        path.write_text(latency_svg(name, runs))
        written.append(path)
    if scaling:
        path = out / "scaling.svg"
        path.write_text(scaling_svg(scaling))
        written.append(path)
    return written

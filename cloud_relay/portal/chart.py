"""The usage chart of a device page: stacked bars of units per UTC day and service kind, as SVG geometry.

Pure: days in, rectangles and ticks out; the template draws them (an ``<svg role="img">`` with a text summary,
and the same numbers in a table below it for screen readers and for copying). No JavaScript, no library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloud_relay.fleet import DAY_MS, DayUsage

__all__ = ["Bar", "Chart", "usage_chart"]

WIDTH, HEIGHT = 720, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 10, 28


@dataclass(frozen=True)
class Bar:
    """One kind's part of one day's bar."""

    x: float
    y: float
    width: float
    height: float
    series: int
    """Index of the kind in :attr:`Chart.kinds` (its colour)."""
    day_ms: int
    kind: str
    units: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    kinds: tuple[str, ...]
    bars: tuple[Bar, ...]
    y_ticks: tuple[tuple[float, int], ...]
    """(y, units) of each horizontal grid line."""
    x_ticks: tuple[tuple[float, int], ...]
    """(x of the bar's centre, day) of each labelled day."""
    baseline: float
    left: int
    total: int


def _step(peak: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000, 100_000):
        if peak / step <= 5:
            return step
    return max(1, peak // 5)


def usage_chart(days: Sequence[DayUsage], start_ms: int, end_ms: int) -> Chart:
    """The chart of ``days`` over ``[start_ms, end_ms)`` (one bar slot per day)."""
    slots = max(1, (end_ms - start_ms) // DAY_MS)
    kinds = tuple(sorted({d.kind for d in days}))
    per_day: dict[int, int] = {}
    for d in days:
        per_day[d.day_ms] = per_day.get(d.day_ms, 0) + d.units
    peak = max(per_day.values(), default=0)
    step = _step(max(peak, 1))
    top = max(step, -(-peak // step) * step)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot_w = plot_w / slots
    baseline = _TOP + plot_h
    stacked: dict[int, float] = {}
    bars = []
    for d in sorted(days, key=lambda u: (u.day_ms, kinds.index(u.kind))):
        slot = (d.day_ms - start_ms) // DAY_MS
        h = plot_h * d.units / top
        y = baseline - stacked.get(d.day_ms, 0.0) - h
        stacked[d.day_ms] = stacked.get(d.day_ms, 0.0) + h
        bars.append(Bar(_LEFT + slot * slot_w + slot_w * 0.15, y, slot_w * 0.7, h, kinds.index(d.kind), d.day_ms,
                        d.kind, d.units))  # fmt: skip
    y_ticks = tuple((baseline - plot_h * v / top, v) for v in range(0, top + 1, step))
    label_every = 1 if slots <= 10 else 5
    x_ticks = tuple((_LEFT + i * slot_w + slot_w / 2, start_ms + i * DAY_MS) for i in range(0, slots, label_every))
    return Chart(WIDTH, HEIGHT, kinds, tuple(bars), y_ticks, x_ticks, baseline, _LEFT, sum(per_day.values()))

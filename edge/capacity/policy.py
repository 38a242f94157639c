"""The clinic's policy for sharing: pure functions from the time, the idle time and the load to a decision.

Rules, in order: never while sharing is switched off; never during opening hours; outside them only after
``idle_minutes`` without clinical work; never while the load per core is above ``max_load``, free memory is
below ``max_memory_mb``, or the accelerator already draws more than ``max_power_w`` (when set). Opening hours
are ``"<days> HH:MM-HH:MM"`` in local time, days ``mon``..``sun`` as a range (``mon-fri``) or a list
(``mon,wed,fri``); a range may cross midnight (``fri 22:00-02:00``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from edge.config import CapacityConfig
from edge.errors import ConfigError

__all__ = ["Decision", "OpeningHours", "decide"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPEC = re.compile(r"^\s*([a-z,\-]+)\s+(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})\s*$")


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(end not in _DAYS for end in ends):
            raise ValueError(part)
        first, last = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        days.update(d % 7 for d in range(first, last + 1 if last >= first else last + 8))
    return frozenset(days)


@dataclass(frozen=True)
class OpeningHours:
    """Weekly opening windows: (weekday, start minute, end minute), end exclusive; a window may cross midnight."""

    windows: tuple[tuple[int, int, int], ...]

    @classmethod
    def parse(cls, specs: tuple[str, ...]) -> OpeningHours:
        """Parse ``capacity.opening_hours``; :class:`ConfigError` names the bad entry."""
        windows: list[tuple[int, int, int]] = []
        for spec in specs:
            match = _SPEC.match(spec.lower())
            try:
                if match is None:
                    raise ValueError(spec)
                start = int(match.group(2)) * 60 + int(match.group(3))
                end = int(match.group(4)) * 60 + int(match.group(5))
                if start >= 24 * 60 or end > 24 * 60 or int(match.group(3)) > 59 or int(match.group(5)) > 59:
                    raise ValueError(spec)
                windows.extend((day, start, end) for day in sorted(_days(match.group(1))))
            except ValueError as exc:
                raise ConfigError(f"capacity.opening_hours: {spec!r} is not '<days> HH:MM-HH:MM'") from exc
        return cls(tuple(windows))

    def is_open(self, now: dt.datetime) -> bool:
        """True when ``now`` (local time) falls in a window."""
        minute, day = now.hour * 60 + now.minute, now.weekday()
        for wday, start, end in self.windows:
            if start < end and wday == day and start <= minute < end:
                return True
            if start >= end and ((wday == day and minute >= start) or ((wday + 1) % 7 == day and minute < end)):
                return True
        return False


@dataclass(frozen=True)
class Decision:
    """Whether to offer now, and why (shown by ``btt-edge capacity status``)."""

    offer: bool
    reason: str


def decide(
    config: CapacityConfig,
    *,
    enabled: bool,
    now: dt.datetime,
    idle_s: float,
    load_per_core: float,
    free_memory_mb: int,
    power_w: int = 0,
    hours: OpeningHours | None = None,
) -> Decision:
    """Apply the policy (module docstring); ``idle_s`` is the time since the last clinical work."""
    if not enabled:
        return Decision(False, "sharing is switched off")
    if (hours or OpeningHours.parse(config.opening_hours)).is_open(now):
        return Decision(False, "clinic is open")
    if idle_s < config.idle_minutes * 60:
        return Decision(False, f"clinical work {idle_s / 60:.1f} min ago (policy: idle {config.idle_minutes:g} min)")
    if load_per_core > config.max_load:
        return Decision(False, f"load {load_per_core:.2f} per core above {config.max_load:g}")
    if free_memory_mb < config.max_memory_mb:
        return Decision(False, f"free memory {free_memory_mb} MB below {config.max_memory_mb} MB")
    if config.max_power_w and power_w > config.max_power_w:
        return Decision(False, f"power draw {power_w} W above {config.max_power_w} W")
    return Decision(True, "idle outside opening hours")

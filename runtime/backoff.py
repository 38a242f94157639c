"""Retry delays: exponential backoff with full jitter (a pure policy; the caller sleeps).

The n-th consecutive failure waits a uniformly random time in ``[0, min(cap, initial * 2**n)]``, so a clinic's
boxes coming back after a broker outage spread out instead of reconnecting in lock-step (the agent's and the
relay's MQTT links). With ``rand=no_jitter`` the delays are the plain doubling ``initial, 2 * initial, ...`` up to
``cap`` (the serial bridge reopening a port: one box, nothing to spread out).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["Backoff", "full_jitter", "no_jitter"]


def full_jitter(attempt: int, initial: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """The delay before retry number ``attempt`` (0 for the first retry)."""
    return rand() * min(cap, math.ldexp(initial, min(attempt, 1000)))


def no_jitter() -> float:
    """The ``rand`` of a backoff without jitter: always the whole delay."""
    return 1.0


class Backoff:
    """Counts consecutive failures; :meth:`next_delay` after a failure, :meth:`reset` after a success."""

    def __init__(self, initial: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self._initial = initial
        self._cap = cap
        self._rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay to wait before the next attempt."""
        delay = full_jitter(self.attempt, self._initial, self._cap, self._rand)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from the first delay (after a success)."""
        self.attempt = 0

"""When background work yields to ingest: a pure policy over the storage SCP's activity, and the one wait loop
that the pipeline and the results builder run before each image.

The unit waits on storage, not on the AI: while the SCP is receiving (data arrived on an open association within
``quiet_s``, :meth:`edge.ingest.scp.StorageSCP.receiving_at`), analysis and result building wait before they take
the next image, so a batch arrives at the disk's rate instead of sharing the cores and Python's GIL with decoding,
inference and drawing. Never more than ``max_defer_s`` in a row, so a long transfer never starves them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from runtime.logs import event

__all__ = ["RECHECK_S", "IngestYield"]

log = logging.getLogger("edge.ingest")

RECHECK_S = 0.05
"""While a worker yields to ingest, it looks at the SCP's activity this often (the pipeline also at once when a
connection closes)."""


class IngestYield:
    """When background work should wait for ingest: a pure policy, asked with the time and the SCP's last receive.

    :meth:`wait_s` says how long to wait before the next image (0: go now). Ingest counts as active while data
    arrived within ``quiet_s`` on an open association; the work then waits until it has been quiet that long, but
    never more than ``max_defer_s`` in a row: after that one image is handled and the next wait starts afresh.
    ``quiet_s = 0`` turns yielding off. One instance per worker (it remembers since when it has deferred).
    """

    def __init__(self, quiet_s: float, max_defer_s: float) -> None:
        self.quiet_s = quiet_s
        self.max_defer_s = max_defer_s
        self._deferring_since: float | None = None

    def wait_s(self, now: float, received_at: float | None) -> float:
        """Seconds to wait before the next image, given ``now`` and when data last arrived on an open association
        (None while none is open); same clock."""
        quiet_for = None if received_at is None else now - received_at
        if quiet_for is None or quiet_for >= self.quiet_s:
            self._deferring_since = None
            return 0.0
        if self._deferring_since is None:
            self._deferring_since = now
        deferred = now - self._deferring_since
        if deferred >= self.max_defer_s:
            self._deferring_since = None  # this image goes now; the next one may wait again
            return 0.0
        return min(self.quiet_s - quiet_for, self.max_defer_s - deferred)

    def pause(self, activity: Callable[[], float | None], sleep: Callable[[float], bool], *, what: str) -> bool:
        """Wait while :meth:`wait_s` says so, asking ``activity()`` (``time.monotonic()`` of the last receive, or
        None) each time; ``sleep(seconds)`` waits at most that long and returns True when the worker is stopping.
        False when it is stopping; the wait, if any, is logged as ``<what> yielded to ingest``."""
        started = now = time.monotonic()
        while (wait := self.wait_s(now, activity())) > 0:
            if sleep(wait):
                return False
            now = time.monotonic()
        if now > started:
            event(log, f"{what} yielded to ingest", waited_s=round(now - started, 2))
        return True

"""A service that runs one loop on a background thread: started, woken early, and stopped cleanly.

Subclasses implement :meth:`BackgroundLoop._run`, which should return soon after ``self._stop`` is set, and wait
with ``self._wake.wait(timeout)`` (then ``self._wake.clear()``) or ``self._stop.wait(timeout)`` between passes.
:meth:`BackgroundLoop.notify` wakes a waiting loop; :meth:`BackgroundLoop.stop` sets both events and joins.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

__all__ = ["BackgroundLoop"]


class BackgroundLoop(ABC):
    """Base of the agent's single-thread services (settlement, retention, pipeline, OTA)."""

    name = "background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """Wake the loop now instead of at the end of its wait."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop on a daemon thread named after the service."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to stop and wait until it has."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @abstractmethod
    def _run(self) -> None:
        """The loop; return soon after ``self._stop`` is set."""

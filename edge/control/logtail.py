"""The recent log lines, in memory, for the terminal UI's live log view.

:class:`LogTail` is a logging handler on the root logger that keeps the last ``capacity`` formatted lines, each
numbered, so that a reader can ask for the lines after the last one it saw (``since``) and filter them.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from runtime.logs import formatter

__all__ = ["LogTail"]


class LogTail(logging.Handler):
    """Keeps the last ``capacity`` log lines (text format) with increasing numbers."""

    def __init__(self, capacity: int) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter("text"))
        self._lines: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=capacity)
        self._next = 1
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken log call must not break the caller
            self.handleError(record)
            return
        with self._mutex:
            self._lines.append((self._next, record.levelname, line))
            self._next += 1

    def read(self, since: int = 0, text: str = "", level: str = "", limit: int = 500) -> dict[str, Any]:
        """Lines numbered above ``since`` containing ``text`` (case-insensitive) at ``level`` or worse; the
        number to pass as ``since`` next time."""
        floor = logging.getLevelName(level.upper()) if level else logging.DEBUG
        floor = floor if isinstance(floor, int) else logging.DEBUG
        needle = text.lower()
        with self._mutex:
            lines = list(self._lines)
            last = self._next - 1
        picked = [
            [n, line]
            for n, lvl, line in lines
            if n > since and logging.getLevelName(lvl) >= floor and (not needle or needle in line.lower())
        ]
        return {"lines": picked[-limit:], "last": last}

"""Messages the screens post up to the app: fetch something from the agent, or run a technician action."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.message import Message
from textual.widgets import DataTable

__all__ = ["ActionRequested", "FetchRequested", "add_columns", "fmt_ms", "value"]


class FetchRequested(Message):
    """Call ``method`` on the agent and give the result to ``deliver`` (on the UI thread)."""

    def __init__(self, method: str, params: dict[str, Any], deliver: Callable[[Any], None]) -> None:
        super().__init__()
        self.method = method
        self.params = params
        self.deliver = deliver


class ActionRequested(Message):
    """Ask the technician to confirm ``prompt``, then run the action ``method`` with ``params``."""

    def __init__(self, method: str, params: dict[str, Any], prompt: str) -> None:
        super().__init__()
        self.method = method
        self.params = params
        self.prompt = prompt


def add_columns(table: DataTable[str], *columns: tuple[str, int]) -> None:
    """Columns of fixed widths (label, characters): a table's layout does not depend on when it is drawn."""
    for label, width in columns:
        table.add_column(label, width=width)


def value(x: Any, missing: str = "-") -> str:
    """``x`` as text for a cell, ``missing`` for None or empty."""
    return missing if x is None or x == "" else str(x)


def fmt_ms(time_ms: Any) -> str:
    """Epoch milliseconds as ``YYYY-MM-DD HH:MM`` UTC."""
    import time

    if not isinstance(time_ms, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(time_ms / 1000))

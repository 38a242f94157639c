"""Messages the screens post up to the app: fetch something from the agent, or run a technician action."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

__all__ = [
    "ActionRequested",
    "FetchRequested",
    "add_columns",
    "fmt_date",
    "fmt_duration_ms",
    "fmt_epoch_ms",
    "fmt_person_name",
    "refill",
    "selected_key",
    "value",
]


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


def refill(table: DataTable[str], rows: Iterable[tuple[str, Sequence[str]]]) -> None:
    """Replace the rows of ``table`` with ``rows`` (key, cells). The cursor stays on the row it was on, found by
    its key, so rows arriving above it do not move the selection to another item; only when that row is gone does
    the cursor keep its position."""
    selected, position = selected_key(table), table.cursor_row
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if table.row_count:
        if selected is not None and RowKey(selected) in table.rows:
            position = table.get_row_index(selected)
        table.move_cursor(row=min(position, table.row_count - 1))


def selected_key(table: DataTable[str]) -> str | None:
    """The key of the row under the cursor of ``table``; None when it has no rows."""
    if table.row_count == 0:
        return None
    key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    return None if key is None else str(key)


def value(x: Any, missing: str = "-") -> str:
    """``x`` as text for a cell, ``missing`` for None or empty."""
    return missing if x is None or x == "" else str(x)


def fmt_epoch_ms(epoch_ms: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A moment, given as Unix milliseconds, as ``fmt`` in UTC (``YYYY-MM-DD HH:MM``); ``-`` if it is not a
    number. Not for durations: see :func:`fmt_duration_ms`."""
    if not isinstance(epoch_ms, (int, float)) or isinstance(epoch_ms, bool):
        return "-"
    return time.strftime(fmt, time.gmtime(epoch_ms / 1000))


def fmt_duration_ms(duration_ms: Any) -> str:
    """A length of time in milliseconds, as a person reads it: ``12 ms``, ``1.50 s``, ``14.0 s``, ``125 s``."""
    if not isinstance(duration_ms, (int, float)) or isinstance(duration_ms, bool) or duration_ms < 0:
        return "-"
    if duration_ms < 1000:
        return f"{duration_ms:.0f} ms"
    seconds = duration_ms / 1000
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_date(dicom_date: Any) -> str:
    """A DICOM date (``YYYYMMDD``) as ``YYYY-MM-DD``; anything else as it is (``-`` if missing)."""
    text = value(dicom_date)
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 and text.isdigit() else text


def fmt_person_name(name: Any) -> str:
    """A DICOM person name (``Family^Given^Middle^Prefix^Suffix``, alphabetic group) as ``Family, Given Middle``;
    ``-`` if missing."""
    parts = value(name, "").split("=")[0].split("^")
    given = " ".join(p for p in parts[1:3] if p)
    return value(", ".join(p for p in (parts[0], given) if p))

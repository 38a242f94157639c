"""The logs screen: a live tail of the agent's log, filtered by text and level."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, RichLog

__all__ = ["LogsView"]

_LEVELS = ("", "INFO", "WARNING", "ERROR")


class LogsView(Vertical):
    """New lines appear as the agent logs them; ``/`` filters by text, ``l`` cycles the lowest level shown."""

    METHOD: ClassVar[str] = "logs"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("slash", "filter", "Filter"),
        Binding("l", "level", "Level"),
    ]
    can_focus = True
    DEFAULT_CSS = """
    LogsView Input { height: 3; }
    LogsView RichLog { height: 1fr; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.since = 0
        self.text = ""
        self.level = ""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter (Enter to apply, empty = all)", id="logs-filter")
        yield RichLog(id="logs-lines", max_lines=5000, wrap=False, markup=False)

    def params(self) -> dict[str, Any]:
        return {"since": self.since, "text": self.text, "level": self.level}

    def show(self, doc: dict[str, Any]) -> None:
        log = self.query_one(RichLog)
        for number, line in doc["lines"]:
            if number > self.since:
                log.write(line)
        self.since = max(self.since, int(doc["last"]))

    def _restart(self) -> None:
        self.since = 0
        self.query_one(RichLog).clear()
        self.border_title = f"level >= {self.level or 'DEBUG'}" + (f" · '{self.text}'" if self.text else "")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.text = event.value.strip()
        self._restart()
        self.focus()

    def action_filter(self) -> None:
        self.query_one(Input).focus()

    def action_level(self) -> None:
        self.level = _LEVELS[(_LEVELS.index(self.level) + 1) % len(_LEVELS)]
        self._restart()

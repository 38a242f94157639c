"""The capacity sharing screen. Until capacity sharing exists in the agent it says so, and shows no numbers."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Static

__all__ = ["CapacityView", "render_capacity"]


def render_capacity(doc: dict[str, Any]) -> str:
    """What the agent says about capacity sharing."""
    if not doc.get("available"):
        return f"[b]Capacity sharing: not available yet[/]\n\n{escape(str(doc.get('reason', '')))}"
    return escape(str(doc))


class CapacityView(VerticalScroll):
    """Capacity sharing: on/off, the current offer and jobs run (when the agent has it)."""

    METHOD: ClassVar[str] = "capacity"

    def compose(self) -> ComposeResult:
        yield Static("waiting for the agent...", id="capacity-body")

    def params(self) -> dict[str, Any]:
        return {}

    def show(self, doc: dict[str, Any]) -> None:
        self.query_one("#capacity-body", Static).update(render_capacity(doc))

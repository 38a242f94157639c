"""The capacity sharing screen: on/off, the policy's decision, the current offer, jobs run (``e`` switches)."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Static

from edge.tui.messages import ActionRequested, add_columns, fmt_epoch_ms, refill, value

__all__ = ["CapacityView", "render_capacity"]


def render_capacity(doc: dict[str, Any]) -> str:
    """Switch, decision, accelerator, offer and totals as Textual markup; says so when sharing is not available."""
    if not doc.get("available"):
        return f"[b]Capacity sharing: not available[/]\n\n{escape(str(doc.get('reason', '')))}"
    on = "[green]on[/]" if doc["enabled"] else "off"
    decision = doc.get("decision") or {}
    lines = [
        f"[b]Sharing[/]     {on} (set by {escape(doc['switch'])}) · e switches it",
        f"[b]Now[/]         {'offering' if decision.get('offer') else 'not offering'}: "
        f"{escape(value(decision.get('reason')))}",
    ]
    acc = doc.get("accelerator")
    if acc:
        lines.append(
            f"[b]Accelerator[/] {escape(str(acc.get('kind')))} {escape(str(acc.get('name')))} · "
            f"{acc.get('free_memory_mb')} of {acc.get('memory_mb')} MB free"
            + (f" · score {doc['score_mflops']} MFLOPS" if doc.get("score_mflops") else "")
        )
    offer = doc.get("offer")
    if offer:
        lines.append(
            f"[b]Offer[/]       {escape(str(offer.get('offer_id', '')))[:16]} · "
            f"{value(offer.get('price_per_item_micro'))} micro/item · until {fmt_epoch_ms(offer.get('expires_ms'))}"
        )
    else:
        lines.append("[b]Offer[/]       none open")
    totals = doc["totals"]
    lines.append(
        f"[b]Jobs done[/]   {totals['jobs_done']} · {totals['items']} items · {totals['device_s']:.1f} s of device time"
    )
    return "\n".join(lines)


def _job_row(job: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A job's table row, keyed by its id."""
    cells = (
        escape(str(job["job_id"]))[:12],
        str(job["state"]),
        value(job["items"]),
        f"{(job['device_ms'] or 0) / 1000:.1f}",
        fmt_epoch_ms(job["updated_ms"]),
        escape(value(job["reason"]))[:30],
    )
    return str(job["job_id"]), cells


class CapacityView(VerticalScroll):
    """Sharing the idle accelerator; clinical work always comes first."""

    METHOD: ClassVar[str] = "capacity"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("e", "switch", "On/off"),
    ]
    DEFAULT_CSS = """
    CapacityView DataTable { height: auto; max-height: 10; margin-top: 1; }
    """
    can_focus = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enabled: bool | None = None

    def compose(self) -> ComposeResult:
        yield Static("waiting for the agent...", id="capacity-body")
        table: DataTable[str] = DataTable(id="capacity-jobs", cursor_type="row")
        add_columns(table, ("Job", 12), ("State", 9), ("Items", 5), ("Device s", 8), ("Updated", 16), ("Reason", 16))
        yield table

    def params(self) -> dict[str, Any]:
        return {}

    def show(self, doc: dict[str, Any]) -> None:
        self.query_one("#capacity-body", Static).update(render_capacity(doc))
        self.enabled = bool(doc["enabled"]) if doc.get("available") else None
        refill(self.query_one(DataTable), map(_job_row, doc.get("jobs", [])))

    def action_switch(self) -> None:
        if self.enabled is None:
            self.notify("capacity sharing is not available on this agent", severity="warning")
            return
        want = not self.enabled
        self.post_message(
            ActionRequested(
                "capacity.set",
                {"enabled": want},
                "Offer this box's idle capacity (clinical work always first)?" if want else "Stop sharing capacity?",
            )
        )

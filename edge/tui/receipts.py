"""The receipts and rights screen: balances, recent receipts, the last settlement and whether the relay confirmed it."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Static

from edge.tui.messages import add_columns, fmt_epoch_ms, refill

__all__ = ["ReceiptsView", "render_receipts"]


def render_receipts(doc: dict[str, Any]) -> str:
    """Balances, parked uses and the last settlement as Textual markup."""
    if not doc["enabled"]:
        return escape("Receipts are off ([receipts] enabled = false).")
    lines = ["[b]Rights[/]" if doc["balances"] else "[b]Rights[/] none installed (uses are billed as overage)"]
    for b in doc["balances"]:
        colour = "red" if b["remaining"] <= 0 else "green"
        lines.append(
            f"  {escape(b['kind'])}: [{colour}]{b['remaining']}[/] of {b['units']} left · {escape(b['id'])} "
            f"until {fmt_epoch_ms(b['not_after_ms'])}"
        )
    if doc["pending"]:
        lines.append(f"[yellow]{doc['pending']} use(s) parked[/] (no device identity yet: `btt-edge provision`)")
    s = doc["settlement"]
    if s is None:
        lines.append("[b]Settlement[/] none yet")
    else:
        colour = "green" if s["relay"] == "confirmed" else "yellow"
        lines.append(
            f"[b]Settlement[/] batch {s['batch']} receipts {s['first_seq']}-{s['last_seq']} closed "
            f"{fmt_epoch_ms(s['closed_ms'])} · relay: [{colour}]{escape(s['relay'])}[/]"
        )
    return "\n".join(lines)


def _row(r: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A receipt's table row, keyed by its sequence number."""
    cells = (
        str(r["seq"]),
        fmt_epoch_ms(r["time_ms"]),
        escape(r["kind"]),
        str(r["units"]),
        str(r["overage_units"]),
        escape(r["right_id"] or "-"),
    )
    return str(r["seq"]), cells


class ReceiptsView(VerticalScroll):
    """Service-right balances and receipts."""

    METHOD: ClassVar[str] = "receipts"
    DEFAULT_CSS = """
    ReceiptsView DataTable { height: auto; max-height: 12; }
    ReceiptsView .title { text-style: bold; margin-top: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("waiting for the agent...", id="receipts-body")
        yield Static("Recent receipts", classes="title")
        table: DataTable[str] = DataTable(id="receipts-table", cursor_type="row")
        add_columns(table, ("Seq", 7), ("Time", 16), ("Kind", 12), ("Units", 5), ("Overage", 7), ("Right", 16))
        yield table

    def params(self) -> dict[str, Any]:
        return {}

    def show(self, doc: dict[str, Any]) -> None:
        self.query_one("#receipts-body", Static).update(render_receipts(doc))
        refill(self.query_one(DataTable), map(_row, doc["receipts"]))

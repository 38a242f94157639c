"""The unit screen: identity, status and link of the X-ray unit, its fault history and its exposure log."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Static

from edge.tui.messages import add_columns, fmt_duration_ms, fmt_epoch_ms, refill, value

if TYPE_CHECKING:
    from edge.control.state import UnitExposure

__all__ = ["UnitView", "render_unit"]


def render_unit(doc: dict[str, Any]) -> str:
    """Identity, status and link as Textual markup."""
    if not doc["configured"]:
        return escape("No unit link configured ([unit] port, or `btt-edge run --serial PORT`).")
    lines = []
    for d in doc["devices"]:
        lines.append(
            f"[b]{escape(d['serial'])}[/] {escape(d['manufacturer'])} {escape(d['model'])} firmware "
            f"{escape(d['firmware'])} · seen {d['last_seen_at'][:19]}"
        )
    for u in doc["units"]:
        lines.append(
            f"  status {escape(u['state'])} · heat {u['heat_pct']}% · tube {u['tube_temp_c']:.1f} °C · "
            f"faults {escape(u['faults'])}"
        )
    link = doc["link"]
    if link is None:
        lines.append("[red]link not started yet[/]")
    else:
        counters = link["counters"]
        lines.append(
            f"[b]Link[/] {escape(link['port'])} {link['state']} v{value(link['version'])}"
            + (f" · [red]{escape(link['error'])}[/]" if link["error"] else "")
        )
        lines.append("  " + escape(json.dumps(counters, separators=(", ", "=")).strip("{}").replace('"', "")))
    return "\n".join(lines) if lines else "The unit has not identified itself yet."


def _fault_row(f: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A fault's table row, keyed by unit, code and when it was raised."""
    cleared = f["cleared_at"][:19] if f["cleared_at"] else "[red]open[/]"
    cells = (escape(f["unit_serial"]), str(f["code"]), f["raised_at"][:19], cleared)
    return f"{f['unit_serial']}/{f['code']}/{f['raised_at']}", cells


def _exposure_row(e: UnitExposure) -> tuple[str, tuple[str, ...]]:
    """An exposure's table row, keyed by unit and exposure id: when it began (the unit's clock, UTC) and for how
    long the beam was on."""
    cells = (
        escape(e["unit_serial"]),
        str(e["exposure_id"]),
        fmt_epoch_ms(e["started_ms"], "%m-%d %H:%M"),
        fmt_duration_ms(e["duration_ms"]) + ("!" if e["aborted"] else ""),
        escape(e["program"]),
        f"{e['kvp']:.0f}",
        f"{e['ma']:.1f}",
        f"{e['dap_mgy_cm2']:.1f}",
        str(e["image_state"]),
    )
    return f"{e['unit_serial']}/{e['exposure_id']}", cells


class UnitView(VerticalScroll):
    """The X-ray unit as the agent sees it."""

    METHOD: ClassVar[str] = "unit"
    DEFAULT_CSS = """
    UnitView DataTable { height: auto; max-height: 8; }
    UnitView .title { text-style: bold; margin-top: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("waiting for the agent...", id="unit-body")
        yield Static("Fault history", classes="title")
        faults: DataTable[str] = DataTable(id="unit-faults", cursor_type="row")
        add_columns(faults, ("Unit", 12), ("Code", 6), ("Raised", 19), ("Cleared", 19))
        yield faults
        yield Static("Exposure log", classes="title")
        exposures: DataTable[str] = DataTable(id="unit-exposures", cursor_type="row")
        add_columns(
            exposures,
            ("Unit", 8),
            ("Id", 5),
            ("Started UTC", 11),
            ("Beam", 7),
            ("Program", 9),
            ("kV", 3),
            ("mA", 4),
            ("DAP", 5),
            ("Image", 8),
        )
        yield exposures

    def params(self) -> dict[str, Any]:
        return {}

    def show(self, doc: dict[str, Any]) -> None:
        self.query_one("#unit-body", Static).update(render_unit(doc))
        refill(self.query_one("#unit-faults", DataTable), map(_fault_row, doc["faults"]))
        refill(self.query_one("#unit-exposures", DataTable), map(_exposure_row, doc["exposures"]))

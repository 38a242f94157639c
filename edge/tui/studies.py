"""The studies screen: recent studies with their state, the findings per tooth of the one selected, resend."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Static

from edge.tui.messages import ActionRequested, FetchRequested, add_columns, value

__all__ = ["StudiesView", "render_study"]

_COLUMNS = (("Received", 16), ("Patient", 12), ("Date", 8), ("Img", 3), ("State", 12), ("Find", 4))
_STATE_COLOURS = {"failed": "red", "results sent": "green", "analysed": "cyan", "analysing": "yellow"}


def _kind(kind: str, confidences: list[float]) -> str:
    """``caries 0.91``, or ``bone_loss x6 (max 0.67)`` for several regions of one kind on one tooth."""
    if len(confidences) == 1:
        return f"{kind} {confidences[0]:.2f}"
    return f"{kind} x{len(confidences)} (max {max(confidences):.2f})"


def render_study(doc: dict[str, Any]) -> str:
    """One study's images: state, model and backend, AI findings per tooth, result deliveries."""
    lines = [f"[b]Study[/] {escape(doc['study_uid'])}", f"[i]{escape(doc['ai_label'])}[/]"]
    for image in doc["images"]:
        lines.append(
            f"[b]{escape(image['modality'])}[/] {escape(image['sop_instance_uid'][-16:])} · {image['pipeline_state']}"
            + (f" ({escape(image['state_reason'])})" if image["state_reason"] else "")
        )
        analysis = image["analysis"]
        if analysis:
            total = analysis["timings_ms"].get("total")
            lines.append(
                f"  AI model {escape(value(analysis['model_id']))} {escape(value(analysis['model_version']))} on "
                f"{escape(value(analysis['backend']))}"
                + (f" ({escape(value(analysis['precision']))})" if analysis.get("precision") else "")
                + (f", {total:.0f} ms" if isinstance(total, (int, float)) else "")
            )
        teeth: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for f in image["findings"]:
            tooth = "no tooth" if f["tooth_fdi"] is None else f"tooth {f['tooth_fdi']}"
            teeth[tooth][f["kind"]].append(f["confidence"])
        if not teeth and analysis:
            lines.append("  no AI findings")
        for tooth, kinds in teeth.items():
            lines.append(f"  {tooth}: {escape(', '.join(_kind(k, c) for k, c in kinds.items()))}")
        for d in image["deliveries"]:
            error = f" ({escape(str(d['last_error']))})" if d["last_error"] else ""
            lines.append(f"  {d['kind']} -> {escape(d['destination'])}: {d['state']}{error}")
    return "\n".join(lines)


class StudiesView(Vertical):
    """Recent studies (newest first); Enter shows findings per tooth; R resends the study's results."""

    METHOD: ClassVar[str] = "studies"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("enter", "open", "Findings"),
        Binding("R", "resend", "Resend"),
    ]
    DEFAULT_CSS = """
    StudiesView DataTable { height: 1fr; min-height: 5; }
    StudiesView #study-detail-box { height: 1fr; border-top: solid $primary; }
    """

    def compose(self) -> ComposeResult:
        table: DataTable[str] = DataTable(id="studies-table", cursor_type="row", zebra_stripes=True)
        add_columns(table, *_COLUMNS)
        yield table
        with VerticalScroll(id="study-detail-box"):
            yield Static("Enter on a study shows its images and AI findings per tooth.", id="study-detail")

    def params(self) -> dict[str, Any]:
        return {"limit": 100}

    def show(self, studies: list[dict[str, Any]]) -> None:
        table: DataTable[str] = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for s in studies:
            colour = _STATE_COLOURS.get(s["state"])
            state = f"[{colour}]{s['state']}[/]" if colour else s["state"]
            table.add_row(
                s["last_received_at"][:16].replace("T", " "),
                escape(value(s["patient_id"]))[:12],
                value(s["study_date"]),
                str(s["images"]),
                state,
                str(s["findings"]),
                key=s["study_uid"],
            )
        if studies:
            table.move_cursor(row=min(row, len(studies) - 1))

    def _selected(self) -> str | None:
        table: DataTable[str] = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return None if key is None else str(key)

    def action_open(self) -> None:
        uid = self._selected()
        if uid is not None:
            self.post_message(FetchRequested("study", {"study_uid": uid}, self.show_detail))

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open()

    def show_detail(self, doc: dict[str, Any]) -> None:
        self.query_one("#study-detail", Static).update(render_study(doc))

    def action_resend(self) -> None:
        uid = self._selected()
        if uid is not None:
            self.post_message(
                ActionRequested("results.resend", {"study_uid": uid}, f"Send the results of study {uid} again?")
            )

"""The studies screen: recent studies with their state, the findings per tooth of the one selected and its draft
treatment plan (an AI draft for the dentist to review), resend."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import DataTable, Static

from edge.plan.render import plan_lines
from edge.tui.messages import (
    ActionRequested,
    FetchRequested,
    add_columns,
    fmt_date,
    fmt_person_name,
    refill,
    selected_key,
    value,
)

if TYPE_CHECKING:
    from edge.control.state import StudySummary

__all__ = ["PLAN_LABEL", "StudiesView", "render_plan", "render_study", "resend_prompt"]

PLAN_LABEL = "AI draft — for the dentist to review"
"""Above every plan the view shows: a draft, never a decision."""

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


def render_plan(doc: dict[str, Any]) -> str:
    """The study's draft plan (the control socket's ``plan`` view) under :data:`PLAN_LABEL`."""
    if not doc.get("available"):
        return f"[b]{PLAN_LABEL}[/]\n{escape(str(doc.get('reason', 'no draft plan')))}"
    return "\n".join([f"[b]{PLAN_LABEL}[/]", *(escape(line) for line in plan_lines(doc))])


def resend_prompt(study: StudySummary) -> str:
    """The question before a study's results are sent again, naming the study as a person recognises it."""
    return "\n".join(
        (
            "Send the AI results of this study again?",
            "",
            f"Patient  {fmt_person_name(study['patient_name'])} ({value(study['patient_id'])})",
            f"Date     {fmt_date(study['study_date'])}",
            f"Study    {value(study['study_description'])}",
            f"UID      {study['study_uid']}",
        )
    )


def _row(s: StudySummary) -> tuple[str, tuple[str, ...]]:
    """A study's table row, keyed by its UID."""
    colour = _STATE_COLOURS.get(s["state"])
    cells = (
        s["last_received_at"][:16].replace("T", " "),
        escape(value(s["patient_id"]))[:12],
        value(s["study_date"]),
        str(s["images"]),
        f"[{colour}]{s['state']}[/]" if colour else s["state"],
        str(s["findings"]),
    )
    return s["study_uid"], cells


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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.studies: dict[str, StudySummary] = {}
        """The studies on show, by UID."""

    def compose(self) -> ComposeResult:
        table: DataTable[str] = DataTable(id="studies-table", cursor_type="row", zebra_stripes=True)
        add_columns(table, *_COLUMNS)
        yield table
        with VerticalScroll(id="study-detail-box"):
            yield Static("Enter on a study shows its images and AI findings per tooth.", id="study-detail")
            yield Static("", id="study-plan")

    def params(self) -> dict[str, Any]:
        return {"limit": 100}

    def show(self, studies: list[StudySummary]) -> None:
        self.studies = {s["study_uid"]: s for s in studies}
        refill(self.query_one(DataTable), map(_row, studies))  # the cursor stays on its study as new ones arrive

    def _selected(self) -> StudySummary | None:
        uid = selected_key(self.query_one(DataTable))
        return None if uid is None else self.studies.get(uid)

    def action_open(self) -> None:
        study = self._selected()
        if study is not None:
            self.post_message(FetchRequested("study", {"study_uid": study["study_uid"]}, self.show_detail))

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open()

    def show_detail(self, doc: dict[str, Any]) -> None:
        self.query_one("#study-detail", Static).update(render_study(doc))
        self.query_one("#study-plan", Static).update("")
        # then its draft plan (one fetch at a time: the app's fetches are exclusive)
        self.post_message(FetchRequested("plan", {"study_uid": doc["study_uid"]}, self.show_plan))

    def show_plan(self, doc: dict[str, Any]) -> None:
        self.query_one("#study-plan", Static).update(render_plan(doc))

    def action_resend(self) -> None:
        study = self._selected()
        if study is not None:  # the request holds the UID: rows arriving while it is confirmed change nothing
            params = {"study_uid": study["study_uid"]}
            self.post_message(ActionRequested("results.resend", params, resend_prompt(study)))

"""The models and OTA screen: the installed bundles (A/B slots), the available update, apply, roll back."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Static

from edge.tui.messages import ActionRequested, value

__all__ = ["ModelsView", "render_models"]


def render_models(doc: dict[str, Any]) -> str:
    """Active model, slots, last update event, last repository check, backend, as Textual markup."""
    ota = doc["ota"]
    if "error" in ota and "active" not in ota:
        return f"[red]{escape(ota['error'])}[/]"
    model = ota.get("active_model", {})
    active = (
        f"[red]{escape(model['error'])}[/]"
        if "error" in model
        else f"{escape(model.get('id', '?'))} {escape(model.get('version', '?'))}"
    )
    lines = [
        f"[b]Active[/]   {active} (slot {escape(str(ota['active']))}) · previous {escape(value(ota.get('previous')))}",
        f"[b]Backend[/]  setting {doc['backend_setting']} · last used "
        + (
            escape(f"{doc['last_analysis']['backend']} at {doc['last_analysis']['recorded_at'][:19]}")
            if doc["last_analysis"]
            else "none yet"
        ),
    ]
    for name, slot in sorted(ota.get("slots", {}).items()):
        lines.append(
            f"  slot {escape(name)}: {escape(value(slot.get('model_id')))} {escape(value(slot.get('version')))} "
            f"({escape(value(slot.get('state')))})"
        )
    if ota.get("staged"):
        lines.append(f"[yellow]staged[/] slot {escape(ota['staged'])}: switches at the pipeline's next idle moment")
    if ota.get("watch_left"):
        lines.append(f"watching the new model: {ota['watch_left']} studies left, {ota.get('failures', 0)} failures")
    last = ota.get("last_event")
    if last:
        lines.append(f"[b]Last event[/] {escape(str(last.get('event')))} {escape(str(last.get('reason', '')))}")
    if not doc["repository"]:
        lines.append("[b]Updates[/]  no repository configured " + escape("([ota] repository_url)"))
    else:
        check = doc["last_check"]
        if check is None:
            lines.append(f"[b]Updates[/]  {escape(doc['repository'])} · not checked yet (c)")
        else:
            offer = check["offer"]
            what = "nothing offered" if offer is None else f"{offer.get('model_id')} {offer.get('version')}"
            lines.append(f"[b]Updates[/]  {escape(str(what))}: {escape(check['verdict'])}")
    lines.append("")
    lines.append("c check for an update · a apply it · b roll back to the previous model")
    return "\n".join(lines)


class ModelsView(VerticalScroll):
    """Installed models and updates."""

    METHOD: ClassVar[str] = "models"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("c", "check", "Check"),
        Binding("a", "apply", "Apply"),
        Binding("b", "rollback", "Roll back"),
    ]
    can_focus = True

    def compose(self) -> ComposeResult:
        yield Static("waiting for the agent...", id="models-body")

    def params(self) -> dict[str, Any]:
        return {}

    def show(self, doc: dict[str, Any]) -> None:
        self.query_one("#models-body", Static).update(render_models(doc))

    def action_check(self) -> None:
        self.post_message(ActionRequested("ota.check", {}, "Ask the update repository for a newer model?"))

    def action_apply(self) -> None:
        self.post_message(
            ActionRequested("ota.apply", {}, "Download, verify and stage the offered model (switches when idle)?")
        )

    def action_rollback(self) -> None:
        self.post_message(
            ActionRequested(
                "ota.rollback", {"reason": "technician: btt-edge tui"}, "Roll back to the previous model now?"
            )
        )

"""The overview screen: unit, DICOM listener, pipeline, model and backend, relay and outbox, disk, CPU/GPU, alerts."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Static

from edge.tui.messages import value

__all__ = ["OverviewView", "render_overview"]


def _unit(u: dict[str, Any]) -> str:
    if not u["configured"]:
        return escape("not configured ([unit] port)")
    link = u["link"]
    text = "[red]link not started[/]" if link is None else f"link {escape(str(link['state']))}"
    if link and link.get("error"):
        text += f" ({escape(str(link['error']))})"
    for unit in u["units"]:
        text += f" · {escape(str(unit['serial']))} {escape(str(unit['state']))}, heat {unit['heat_pct']}%"
    faults = len(u["open_faults"])
    return text + (f" · [red]{faults} open fault(s)[/]" if faults else " · no faults")


def _relay(r: dict[str, Any]) -> str:
    if not r["configured"]:
        link = "offline (no relay configured)"
    else:
        link = {True: "[green]connected[/]", False: "[red]down[/]", None: "unknown"}[r["connected"]]
    outbox = r["outbox"]
    text = f"{link} · outbox {r['outbox_depth']}"
    if outbox.get("oldest_pending_age_s"):
        text += f", oldest {_age(outbox['oldest_pending_age_s'])}"
    return text + (f" · [red]{outbox['rejected']} rejected[/]" if outbox.get("rejected") else "")


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def render_overview(doc: dict[str, Any]) -> str:
    """The overview as Textual markup."""
    dicom, pipe, disk, system = doc["dicom"], doc["pipeline"], doc["disk"], doc["system"]
    model = pipe["model"]
    model_text = (
        f"[red]{escape(model['error'])}[/]" if "error" in model else f"{escape(model['id'])} {escape(model['version'])}"
    )
    associations = value(dicom["associations"], "?")
    lines = [
        f"[b]Unit[/]      {_unit(doc['unit'])}",
        f"[b]DICOM[/]     {escape(dicom['ae_title'])} port {dicom['port']} · "
        f"{associations}/{dicom['max_associations']} associations",
        f"[b]Pipeline[/]  {'on' if pipe['enabled'] else 'off'} · queue {pipe['queue']} · "
        f"failed {pipe['states'].get('failed', 0)} · analysed {pipe['states'].get('analysed', 0)}",
        f"[b]Model[/]     {model_text} on {escape(value(pipe['backend'], 'no backend yet'))} "
        f"({pipe['backend_setting']})",
        f"[b]Relay[/]     {_relay(doc['relay'])}",
        f"[b]Disk[/]      {disk['free_mb'] / 1024:.1f} GB free of {disk['total_mb'] / 1024:.1f} GB "
        f"(reserve {disk['reserve_mb'] / 1024:.1f} GB)",
        f"[b]System[/]    load {' '.join(f'{x:.2f}' for x in system['load'])} ({system['cpus']} CPUs) · "
        f"GPU {escape(system['gpu'])}",
        f"[b]Agent[/]     {doc['agent']['version']} · up {doc['agent']['uptime_s']} s · "
        f"{escape(doc['agent']['data_dir'])}",
        "",
    ]
    alerts = doc["alerts"]
    if not alerts:
        lines.append("[b]Alerts[/]    [green]none[/]")
    else:
        lines.append(f"[b]Alerts[/]    {len(alerts)}")
        for alert in alerts:
            colour = "red" if alert["level"] == "error" else "yellow"
            lines.append(f"  [{colour}]{alert['level']}[/] {escape(alert['text'])}")
    return "\n".join(lines)


class OverviewView(VerticalScroll):
    """The state of the whole box on one screen."""

    METHOD: ClassVar[str] = "overview"

    def compose(self) -> ComposeResult:
        yield Static("waiting for the agent...", id="overview-body")

    def params(self) -> dict[str, Any]:
        return {}

    def show(self, doc: dict[str, Any]) -> None:
        self.query_one("#overview-body", Static).update(render_overview(doc))

"""``btt-edge tui``: behaviour with Textual's Pilot (headless, 80x24), and what a person sees: the SVG screenshot
Textual exports, laid back out as 24 lines of 80 characters and compared with the snapshots in
``tests/snapshots/`` (pytest-textual-snapshot is not used: its syrupy pin needs pytest < 9). After an intended
change of a screen, rewrite its snapshot file from the text the failing test prints.

Most tests feed the app from a small fake of the control client; the last one attaches to a real control server
over its Unix socket.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import html
import os
import re
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, RichLog, Static

from edge.config import AgentConfig, with_overrides
from edge.control import AgentState, ControlClient, ControlServer
from edge.db import DB_FILENAME, connect
from edge.errors import ControlError
from edge.outbox import Outbox
from edge.store.index import migrate_index
from edge.tui import TechnicianApp
from edge.tui.app import ConfirmScreen
from edge.tui.messages import fmt_date, fmt_duration_ms, fmt_epoch_ms, fmt_person_name

STUDY = "1.2.826.0.1.3680043.8.498.77"

OVERVIEW: dict[str, Any] = {
    "time": "2026-11-24T10:00:00.000Z",
    "agent": {"version": "0.1.0", "uptime_s": 42, "pid": 1, "data_dir": "/var/lib/btt-edge"},
    "unit": {
        "configured": True,
        "port": "/dev/ttyUSB0",
        "link": {"state": "connected", "error": None},
        "units": [{"serial": "PANO-7", "state": "ready", "heat_pct": 12}],
        "open_faults": [],
    },
    "dicom": {"ae_title": "BTT_EDGE", "port": 11112, "associations": 1, "max_associations": 8},
    "pipeline": {
        "enabled": True,
        "states": {"analysed": 3, "failed": 1},
        "queue": 2,
        "model": {"id": "btt-reference-dental-pano", "version": "0.1.0"},
        "backend": "onnxruntime-cpu",
        "backend_setting": "auto",
    },
    "results": {"deliveries": {"sent": 4}, "sources": {"built": 4}},
    "relay": {
        "configured": True,
        "connected": False,
        "outbox": {"pending": {"receipts": 5}, "rejected": 0, "oldest_pending_age_s": 30},
        "outbox_depth": 5,
    },
    "receipts": {"parked": 0},
    "ota_event": None,
    "disk": {"path": "/var/lib/btt-edge", "free_mb": 40960, "total_mb": 102400, "reserve_mb": 1024},
    "system": {"load": [0.5, 0.4, 0.3], "cpus": 6, "gpu": "37% (Jetson GPU)"},
    "alerts": [
        {"level": "warning", "text": "1 image(s) failed analysis"},
        {"level": "warning", "text": "relay link down: the outbox is queuing"},
    ],
}

STUDIES = [
    {
        "study_uid": STUDY,
        "study_date": "20261124",
        "study_description": "PANO",
        "last_received_at": "2026-11-24T09:58:00.000Z",
        "patient_id": "P-0042",
        "patient_name": "Doe^Jane",
        "images": 1,
        "states": {"forwarded": 1},
        "state": "results sent",
        "findings": 2,
    }
]

DETAIL = {
    "study_uid": STUDY,
    "ai_label": "AI findings: for review by a clinician",
    "images": [
        {
            "sop_instance_uid": STUDY + ".1.1",
            "modality": "PX",
            "pipeline_state": "forwarded",
            "state_reason": "",
            "received_at": "2026-11-24T09:58:00.000Z",
            "analysis": {
                "status": "analysed",
                "reason": "",
                "model_id": "btt-reference-dental-pano",
                "model_version": "0.1.0",
                "backend": "onnxruntime-cpu",
                "clinical": 0,
                "timings_ms": {"total": 812.0},
            },
            "findings": [
                {"kind": "caries", "tooth_fdi": "36", "confidence": 0.91},
                {"kind": "periapical_lesion", "tooth_fdi": "36", "confidence": 0.64},
            ],
            "deliveries": [
                {
                    "object_uid": "9.1",
                    "kind": "sr",
                    "destination": "PACS",
                    "state": "sent",
                    "attempts": 1,
                    "last_error": None,
                },
            ],
        }
    ],
}

RESPONSES: dict[str, Any] = {
    "ping": {"version": "0.1.0", "uptime_s": 42, "pid": 1},
    "overview": OVERVIEW,
    "studies": STUDIES,
    "study": DETAIL,
    "plan": {"available": False, "reason": "draft plans are off on this box ([plan] enabled = false)"},
    "unit": {
        "configured": True,
        "link": {
            "port": "/dev/ttyUSB0",
            "state": "connected",
            "version": 1,
            "error": None,
            "counters": {"frames_in": 120, "crc_errors": 0},
        },
        "units": [{"serial": "PANO-7", "state": "ready", "heat_pct": 12, "tube_temp_c": 31.5, "faults": "[]"}],
        "open_faults": [],
        "devices": [
            {
                "serial": "PANO-7",
                "manufacturer": "Acme",
                "model": "P1",
                "firmware": "2.1",
                "last_seen_at": "2026-11-24T09:59:00.000Z",
            }
        ],
        "faults": [
            {
                "unit_serial": "PANO-7",
                "code": 17,
                "raised_at": "2026-11-23T08:00:00.000Z",
                "cleared_at": "2026-11-23T08:05:00.000Z",
            }
        ],
        "exposures": [
            {
                "unit_serial": "PANO-7",
                "exposure_id": 881,
                "program": "PANO",
                "kvp": 70.0,
                "ma": 8.0,
                "duration_ms": 14000,
                "started_ms": 1795946280000,
                "aborted": False,
                "dap_mgy_cm2": 98.5,
                "image_state": "matched",
            }
        ],
    },
    "receipts": {
        "enabled": True,
        "balances": [
            {
                "id": "grant-1",
                "kind": "analysis",
                "holder": "clinic",
                "units": 100,
                "used": 58,
                "remaining": 42,
                "not_after_ms": 1830000000000,
            }
        ],
        "receipts": [
            {
                "seq": 58,
                "time_ms": 1795946280000,
                "kind": "analysis",
                "right_id": "grant-1",
                "units": 1,
                "overage_units": 0,
            }
        ],
        "pending": 0,
        "settlement": {"batch": 3, "first_seq": 41, "last_seq": 57, "closed_ms": 1795940000000, "relay": "confirmed"},
    },
    "models": {
        "ota": {
            "active": "a",
            "previous": "factory",
            "slots": {"a": {"model_id": "btt-reference-dental-pano", "version": "0.2.0", "state": "active"}},
            "staged": None,
            "watch_left": 10,
            "failures": 0,
            "last_event": None,
            "active_model": {"id": "btt-reference-dental-pano", "version": "0.2.0"},
        },
        "repository": "https://updates.example/ota",
        "last_check": None,
        "backend_setting": "auto",
        "last_analysis": {
            "model_id": "btt-reference-dental-pano",
            "model_version": "0.2.0",
            "backend": "onnxruntime-cpu",
            "recorded_at": "2026-11-24T09:58:01.000Z",
        },
    },
    "capacity": {"available": False, "reason": "capacity sharing has not run on this agent yet"},
    "logs": {
        "lines": [
            [1, "2026-11-24T09:58:00Z INFO    ingest     stored sop=1.2.3"],
            [2, "2026-11-24T09:58:01Z ERROR   results    delivery dead sop=1.2.3"],
        ],
        "last": 2,
    },
    "results.resend": {"deliveries": 3},
    "ota.check": {"offer": None, "verdict": "no-bundle"},
}


class FakeAgent:
    """Answers like the control client from canned responses; records every call."""

    def __init__(self, responses: dict[str, Any] | None = None, *, down: bool = False) -> None:
        self.responses = copy.deepcopy(RESPONSES if responses is None else responses)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.down = down

    def call(self, method: str, *, timeout_s: float | None = None, **params: Any) -> Any:
        self.calls.append((method, params))
        if self.down:
            raise ControlError("the agent is not running (no control socket at /x/control.sock)")
        return copy.deepcopy(self.responses[method])

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test in its own event loop (no asyncio plugin needed)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def _text(app: TechnicianApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


async def _settle(pilot: Any) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@sync
async def test_overview_fits_80x24_and_says_everything() -> None:
    app = TechnicianApp(FakeAgent(), refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        body = _text(app, "#overview-body")
        for expected in (
            "link connected",
            "PANO-7 ready, heat 12%",
            "BTT_EDGE port 11112",
            "1/8 associations",
            "queue 2",
            "failed 1",
            "btt-reference-dental-pano 0.1.0",
            "on onnxruntime-cpu (auto)",
            "down",
            "outbox 5, oldest 30 s",
            "40.0 GB free",
            "GPU 37% (Jetson GPU)",
            "relay link down: the outbox is queuing",
        ):
            assert expected in body, expected
        svg = app.export_screenshot()
    text = _svg_text(svg)
    for title in ("1 Overview", "2 Studies", "3 Unit", "4 Receipts", "5 Models", "6 Capacity", "7 Logs"):
        assert title in text, title  # every tab visible on 80 columns
    for line in ("Unit", "DICOM", "Pipeline", "Model", "Relay", "Disk", "System", "Alerts"):
        assert line in text, line
    assert "Quit" in text  # the footer's key help


SNAPSHOTS = Path(__file__).parent / "snapshots"
_SVG_TEXT = re.compile(
    r'<text [^>]*?x="([\d.]+)" y="[\d.]+" textLength="[\d.]+" clip-path="url\(#[\w-]+-line-(\d+)\)">(.*?)</text>'
)


def screen_text(svg: str, size: tuple[int, int] = (80, 24)) -> str:
    """The characters of a Textual SVG screenshot, one line per terminal row (trailing spaces dropped)."""
    width, height = size
    rows = [[" "] * width for _ in range(height)]
    for match in _SVG_TEXT.finditer(svg):
        column, row = round(float(match.group(1)) / 12.2), int(match.group(2))
        for i, char in enumerate(html.unescape(match.group(3)).replace("\xa0", " ")):
            if row < height and column + i < width:
                rows[row][column + i] = char
    return "\n".join("".join(r).rstrip() for r in rows) + "\n"


def _svg_text(svg: str) -> str:
    """The visible text of a Textual SVG screenshot (non-breaking spaces as spaces)."""
    return re.sub(r"<[^>]+>", "", svg).replace("&#160;", " ").replace("\xa0", " ")


@pytest.mark.parametrize(
    ("key", "method", "selector", "expected"),
    [
        ("3", "unit", "#unit-body", "Acme P1 firmware 2.1"),
        ("4", "receipts", "#receipts-body", "42[/] of 100 left"),
        ("5", "models", "#models-body", "btt-reference-dental-pano 0.2.0 (slot a)"),
        ("6", "capacity", "#capacity-body", "Capacity sharing: not available"),
    ],
)
@sync
async def test_number_keys_switch_screens(key: str, method: str, selector: str, expected: str) -> None:
    agent = FakeAgent()
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        await pilot.press(key)
        await _settle(pilot)
        assert method in agent.methods()
        body = app.query_one(selector, Static)
        assert expected.replace("[/]", "") in str(body.render()) or expected in str(body.content)


@sync
async def test_receipts_show_settlement_confirmation_and_table() -> None:
    app = TechnicianApp(FakeAgent(), refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await _settle(pilot)
        assert "relay: confirmed" in _text(app, "#receipts-body")
        table = app.query_one("#receipts-table", DataTable)
        assert table.row_count == 1
        assert table.get_row_at(0)[2] == "analysis"


@sync
async def test_unit_fault_history_and_exposure_log() -> None:
    app = TechnicianApp(FakeAgent(), refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await _settle(pilot)
        assert app.query_one("#unit-faults", DataTable).get_row_at(0)[1] == "17"
        exposure = app.query_one("#unit-exposures", DataTable).get_row_at(0)
        assert exposure[1] == "881"
        assert exposure[8] == "matched"


@pytest.mark.parametrize(
    ("formatted", "expected"),
    [
        (fmt_duration_ms(12), "12 ms"),
        (fmt_duration_ms(1500), "1.50 s"),
        (fmt_duration_ms(14000), "14.0 s"),
        (fmt_duration_ms(125_000), "125 s"),
        (fmt_duration_ms(None), "-"),
        (fmt_duration_ms(True), "-"),
        (fmt_epoch_ms(1795946280000), "2026-11-29 09:58"),
        (fmt_epoch_ms("1795946280000"), "-"),
        (fmt_date("20261124"), "2026-11-24"),
        (fmt_date(""), "-"),
        (fmt_date("2026"), "2026"),
        (fmt_person_name("Doe^Jane^Q^Dr"), "Doe, Jane Q"),
        (fmt_person_name("Yamada^Tarou=山田^太郎"), "Yamada, Tarou"),
        (fmt_person_name("^Jane"), "Jane"),
        (fmt_person_name(""), "-"),
    ],
)
def test_cell_formats(formatted: str, expected: str) -> None:
    assert formatted == expected


@sync
async def test_exposure_log_shows_when_an_exposure_began_and_how_long_the_beam_was_on() -> None:
    """Regression: the beam-on time (14000 ms) was formatted as a date, so every exposure read 1970-01-01."""
    agent = FakeAgent()
    first = agent.responses["unit"]["exposures"][0]
    aborted = {**first, "exposure_id": 882, "duration_ms": 420, "started_ms": first["started_ms"] + 65_000}
    agent.responses["unit"]["exposures"] = [{**aborted, "aborted": True}, first]
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await _settle(pilot)
        table = app.query_one("#unit-exposures", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert [r[1:4] for r in rows] == [["882", "11-29 09:59", "420 ms!"], ["881", "11-29 09:58", "14.0 s"]]
        text = screen_text(app.export_screenshot())
    assert "1970" not in text
    assert "Started UTC" in text
    assert "  PANO-7    881    11-29 09:58  14.0 s   PANO       70   8.0   98.5   matched\n" in text  # all on 80


@sync
async def test_studies_findings_per_tooth_and_resend_after_confirmation() -> None:
    agent = FakeAgent()
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await _settle(pilot)
        table = app.query_one("#studies-table", DataTable)
        assert table.row_count == 1
        assert table.get_row_at(0)[1] == "P-0042"
        await pilot.press("enter")
        await _settle(pilot)
        assert ("study", {"study_uid": STUDY}) in agent.calls
        detail = _text(app, "#study-detail")
        assert "AI findings: for review by a clinician" in detail
        assert "tooth 36: caries 0.91, periapical_lesion 0.64" in detail
        assert "sr -> PACS: sent" in detail
        # resend: asks first; "n" does nothing
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await _settle(pilot)
        assert "results.resend" not in agent.methods()
        await pilot.press("R")
        await pilot.pause()
        await pilot.press("y")
        await _settle(pilot)
        assert ("results.resend", {"study_uid": STUDY}) in agent.calls


def _study(n: int) -> dict[str, Any]:
    """Another study, received after ``STUDY``."""
    return {
        **STUDIES[0],
        "study_uid": f"{STUDY}.{n}",
        "patient_id": f"P-{n:04d}",
        "patient_name": f"Roe^Richard{n}",
        "study_description": "BITEWING",
        "last_received_at": f"2026-11-24T10:{n:02d}:00.000Z",
    }


@sync
async def test_resend_acts_on_the_study_selected_while_new_studies_arrive() -> None:
    """Regression: the selection stayed at a row position while new studies arrived above it, so ``R`` resent
    another study than the one opened, and the confirmation named only a UID."""
    agent = FakeAgent()
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await _settle(pilot)
        await pilot.press("enter")  # the technician opens the one study there is
        await _settle(pilot)
        table = app.query_one("#studies-table", DataTable)
        agent.responses["studies"] = [_study(2), _study(1), *STUDIES]  # two studies arrive, newest first
        await pilot.press("r")
        await _settle(pilot)
        assert table.row_count == 3
        assert table.cursor_row == 2  # still on the opened study
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        prompt = app.screen.prompt
        for expected in ("Patient  Doe, Jane (P-0042)", "Date     2026-11-24", "Study    PANO", f"UID      {STUDY}"):
            assert expected in prompt, expected
        agent.responses["studies"] = [_study(4), _study(3), *agent.responses["studies"]]
        app.action_refresh()  # more arrive while the question is on screen
        await _settle(pilot)
        assert table.row_count == 5
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await _settle(pilot)
        assert [c for c in agent.calls if c[0] == "results.resend"] == [("results.resend", {"study_uid": STUDY})]
        assert table.row_count == 5
        assert table.get_row_at(table.cursor_row)[1] == "P-0042"


@sync
async def test_models_check_apply_rollback_are_confirmed_actions() -> None:
    agent = FakeAgent()
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await _settle(pilot)
        assert "c check for an update" in _text(app, "#models-body")
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await _settle(pilot)
        assert "ota.check" in agent.methods()
        agent.responses["ota.rollback"] = {"outcome": "rolled-back", "active": "factory"}
        await pilot.press("b")
        await pilot.pause()
        await pilot.press("escape")
        await _settle(pilot)
        assert "ota.rollback" not in agent.methods()
        await pilot.press("b")
        await pilot.pause()
        await pilot.press("y")
        await _settle(pilot)
        assert ("ota.rollback", {"reason": "technician: btt-edge tui"}) in agent.calls


CAPACITY = {
    "available": True,
    "enabled": False,
    "switch": "config",
    "decision": {"offer": False, "reason": "sharing is switched off"},
    "accelerator": {"kind": "cuda", "name": "Orin", "memory_mb": 16000, "free_memory_mb": 9000},
    "score_mflops": 1200,
    "offer": None,
    "jobs": [
        {
            "job_id": "job-1",
            "state": "done",
            "items": 64,
            "device_ms": 5200,
            "updated_ms": 1795946280000,
            "reason": None,
        }
    ],
    "totals": {"jobs_done": 1, "items": 64, "device_s": 5.2},
}


@sync
async def test_capacity_screen_and_switch() -> None:
    agent = FakeAgent()
    agent.responses["capacity"] = CAPACITY
    agent.responses["capacity.set"] = {"enabled": True}
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        await _settle(pilot)
        body = _text(app, "#capacity-body")
        assert "not offering: sharing is switched off" in body
        assert "cuda Orin" in body
        assert "1 · 64 items · 5.2 s" in body
        assert app.query_one("#capacity-jobs", DataTable).get_row_at(0)[1] == "done"
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await _settle(pilot)
        assert ("capacity.set", {"enabled": True}) in agent.calls


@sync
async def test_refused_action_is_shown_not_raised() -> None:
    class Refusing(FakeAgent):
        def call(self, method: str, *, timeout_s: float | None = None, **params: Any) -> Any:
            if method == "ota.apply":
                self.calls.append((method, params))
                raise ControlError("this agent has no model updater")
            return super().call(method, timeout_s=timeout_s, **params)

    agent = Refusing()
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("5")
        await _settle(pilot)
        await pilot.press("a")
        await pilot.pause()
        await pilot.press("y")
        await _settle(pilot)
        assert "ota.apply" in agent.methods()
        assert any("no model updater" in n.message for n in app._notifications)


@sync
async def test_logs_tail_and_filter() -> None:
    agent = FakeAgent()
    app = TechnicianApp(agent, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("7")
        await _settle(pilot)
        log = app.query_one(RichLog)
        assert len(log.lines) == 2
        await pilot.press("slash")
        await pilot.press(*"dead", "enter")
        await pilot.press("r")
        await _settle(pilot)
        assert agent.calls[-1] == ("logs", {"since": 0, "text": "dead", "level": ""})
        await pilot.press("l")  # lowest level INFO
        await pilot.press("r")
        await _settle(pilot)
        assert agent.calls[-1][1]["level"] == "INFO"


@sync
async def test_agent_not_reachable_is_said_plainly() -> None:
    app = TechnicianApp(FakeAgent(down=True), refresh_s=60)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await _settle(pilot)
        assert app.title == "BTT Edge - agent not reachable"
        assert any("not running" in n.message for n in app._notifications)
        assert _text(app, "#overview-body") == "waiting for the agent..."


@sync
async def test_attached_to_a_real_control_socket(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = with_overrides(AgentConfig(), agent={"data_dir": str(data)})
    conn = connect(data / DB_FILENAME)
    migrate_index(conn)
    Outbox.migrate(conn)
    conn.close()
    server = ControlServer(config.control, AgentState(config))
    server.start()
    try:
        with ControlClient(server.path) as client:
            app = TechnicianApp(client, refresh_s=60)
            async with app.run_test(size=(80, 24)) as pilot:
                await _settle(pilot)
                body = _text(app, "#overview-body")
                assert "BTT_EDGE port 11112" in body
                assert "no model updater in this agent" in body
                await pilot.press("6")
                await _settle(pilot)
                assert "not available" in _text(app, "#capacity-body")
                await pilot.press("2")
                await _settle(pilot)
                assert app.query_one("#studies-table", DataTable).row_count == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("name", "keys"),
    [("overview", ()), ("studies", ("2", "enter")), ("receipts", ("4",)), ("models", ("5",))],
)
@sync
async def test_screens_match_their_snapshots(name: str, keys: tuple[str, ...]) -> None:
    app = TechnicianApp(FakeAgent(), refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await _settle(pilot)
        for key in keys:
            await pilot.press(key)
            await _settle(pilot)
        seen = screen_text(app.export_screenshot())
    expected = (SNAPSHOTS / f"tui_{name}.txt").read_text(encoding="utf-8")
    assert seen == expected, f"the {name} screen changed; it now reads:\n{seen}"


def test_btt_edge_tui_without_an_agent_says_so(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "edge", "tui", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )
    assert result.returncode == 2
    assert "the agent is not running" in result.stderr
    assert str(tmp_path / "control.sock") in result.stderr

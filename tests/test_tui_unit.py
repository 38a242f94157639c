"""The Unit screen against a simulated X-ray unit on a real pty: the agent's unit service records what the unit
reports, the control socket serves it, the terminal UI shows identity, status, the fault history and the exposure
log, and the overview raises the open fault as an alert."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from edge.config import AgentConfig, with_overrides
from edge.control import AgentState, ControlClient, ControlServer
from edge.receipts.book import ReceiptBook
from edge.tui import TechnicianApp
from edge.unit.service import UnitService
from edge.unit.simulator import PtyTransport, UnitSimulator
from firmware_bridge.link import SerialLinkSettings
from firmware_bridge.messages import ExposureCompleted
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SIM_LINK = SerialLinkSettings(ack_timeout_s=0.05, hello_interval_s=0.05, reopen_initial_s=0.02, reopen_max_s=0.1)


def test_unit_screen_with_a_simulated_unit(tmp_path: Path) -> None:
    transport = PtyTransport(link=tmp_path / "unit0")
    sim = UnitSimulator(transport, settings=SIM_LINK)
    transport.open()
    sim.start()
    config = with_overrides(
        AgentConfig(),
        agent={"data_dir": str(tmp_path / "data")},
        unit={
            "port": transport.port,
            "read_timeout_s": 0.02,
            "ack_timeout_s": 0.05,
            "hello_interval_s": 0.05,
            "match_interval_s": 0.05,
        },
    )
    service = UnitService(config.unit, config.agent.data_dir, book=ReceiptBook(None))
    server = ControlServer(config.control, AgentState(config))
    try:
        service.start()
        wait_until(lambda: service.identity is not None)
        server.start()
        exposed = [sim.expose(duration_s=d) for d in (0.01, 0.02, 0.03)]
        sim.raise_fault(0x0101)
        with ControlClient(server.path) as client:
            wait_until(lambda: len(client.call("unit")["exposures"]) == 3 and bool(client.call("unit")["open_faults"]))
            asyncio.run(_look(client, [e for e in exposed if e is not None]))
    finally:
        server.stop()
        service.stop()
        sim.stop()


async def _look(client: ControlClient, exposed: list[ExposureCompleted]) -> None:
    app = TechnicianApp(client, refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        overview = str(app.query_one("#overview-body", Static).render())
        assert "link connected" in overview
        assert "1 open fault(s)" in overview
        assert "fault 257" in overview  # the alert
        await pilot.press("3")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        body = str(app.query_one("#unit-body", Static).render())
        assert "firmware" in body
        assert "Link" in body
        assert "connected" in body
        faults = app.query_one("#unit-faults", DataTable)
        assert faults.row_count == 1
        assert faults.get_row_at(0)[1] == "257"
        exposures = app.query_one("#unit-exposures", DataTable)
        rows = [exposures.get_row_at(i) for i in range(exposures.row_count)]
        assert [r[1] for r in rows] == ["3", "2", "1"]
        # when each began, on the unit's clock, and how long its beam was on (not the beam time read as a date)
        assert [r[2:4] for r in rows] == [
            [time.strftime("%m-%d %H:%M", time.gmtime(e.started_ms / 1000)), f"{e.time_ms} ms"]
            for e in reversed(exposed)
        ]
        assert [e.time_ms for e in exposed] == [10, 20, 30]

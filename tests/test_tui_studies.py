"""The Studies screen on a real control socket, over studies stored from a generated radiograph, the product's
synthetic panoramic and the unit simulator's image: the selection stays on the study the technician opened while
new studies arrive above it, the resend confirmation names the patient, date and description, and the resend
reaches that study's deliveries and no other's."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from textual.widgets import DataTable

from edge.config import AgentConfig, with_overrides
from edge.control import AgentState, ControlClient, ControlServer
from edge.db import transaction
from edge.results import queue
from edge.store.image_store import ImageStore
from edge.tui import TechnicianApp
from edge.tui.app import ConfirmScreen
from edge.tui.messages import selected_key
from tests.results_helpers import ingest, simulated_panoramic, source_image, synthetic_panoramic
from tests.test_tui import _settle, sync

PACS = "PACS@127.0.0.1:104"


def _stored_and_sent(store: ImageStore, ds: Dataset) -> str:
    """Store ``ds``, queue an SR of it for the PACS and record it sent; the study's UID."""
    sop = ingest(store, ds)
    obj = queue.ResultObject(f"{sop}.9", sop, str(ds.StudyInstanceUID), "sr", "1.2.840.10008.5.1.4.1.1.88.34",
                             "1.2.840.10008.1.2.1", f"results/{sop}.9.dcm", 10, "ab")  # fmt: skip
    with transaction(store.conn):
        queue.enqueue(store.conn, obj, [PACS], 0.0)
    with transaction(store.conn):
        queue.record_sent(store.conn, obj.object_uid, PACS, 0)
    return str(ds.StudyInstanceUID)


def _delivery_states(store: ImageStore) -> dict[str, str]:
    return {s.object.study_uid: s.deliveries[0].state for s in queue.list_objects(store.conn)}


@sync
async def test_resend_names_the_opened_study_and_resends_it_while_others_arrive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = ImageStore(data, min_free_mb=0, duplicate_policy="keep")
    store.start()
    queue.migrate_results(store.conn)
    opened = source_image(rows=64, columns=128)
    opened.StudyDescription = "OPG"
    uid = _stored_and_sent(store, opened)
    config = with_overrides(AgentConfig(), agent={"data_dir": str(data)})
    server = ControlServer(config.control, AgentState(config))
    server.start()
    try:
        with ControlClient(server.path) as client:
            app = TechnicianApp(client, refresh_s=60)
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.press("2")
                await _settle(pilot)
                await pilot.press("enter")
                await _settle(pilot)
                table = app.query_one("#studies-table", DataTable)
                assert selected_key(table) == uid
                others = [_stored_and_sent(store, ds) for ds in (synthetic_panoramic(), simulated_panoramic())]
                await pilot.press("r")
                await _settle(pilot)
                assert table.row_count == 3
                assert selected_key(table) == uid  # newest first: the opened study is now the last row
                assert table.cursor_row == 2
                await pilot.press("R")
                await pilot.pause()
                assert isinstance(app.screen, ConfirmScreen)
                prompt = app.screen.prompt
                for expected in ("Müller, Jürgen (PID-0042)", "2026-11-24", "Study    OPG", uid):
                    assert expected in prompt, expected
                await pilot.press("y")
                await _settle(pilot)
            assert _delivery_states(store) == {uid: "pending", **{other: "sent" for other in others}}
    finally:
        server.stop()
        store.stop()

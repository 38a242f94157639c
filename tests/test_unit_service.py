"""The unit service and the simulated unit over a real pty: nothing lost, nothing doubled, whatever the line does."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import UnitConfig
from edge.db import DB_FILENAME, connect
from edge.errors import ConfigError
from edge.receipts.book import ReceiptBook
from edge.store.header import read_header
from edge.store.index import record_instance
from edge.unit.exposures import list_exposures, summary
from edge.unit.service import UnitService, image_facts
from edge.unit.simulator import PtyTransport, SimulatorScript, UnitSimulator, image_dataset
from firmware_bridge.driver import ReferenceDriver
from firmware_bridge.errors import FramingError
from firmware_bridge.framing import FrameKind, decode_frame
from firmware_bridge.link import SerialLinkSettings
from firmware_bridge.messages import ExposureCompleted
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SIM_LINK = SerialLinkSettings(ack_timeout_s=0.05, hello_interval_s=0.05, reopen_initial_s=0.02, reopen_max_s=0.1)


def _config(port: str, **overrides: float) -> UnitConfig:
    values: dict[str, float] = {
        "read_timeout_s": 0.02,
        "ack_timeout_s": 0.05,
        "hello_interval_s": 0.05,
        "peer_timeout_s": 2.0,
        "reopen_initial_s": 0.02,
        "reopen_max_s": 0.1,
        "resync_interval_s": 0.5,
        "match_interval_s": 0.05,
    }
    values.update(overrides)
    return UnitConfig(port=port, **values)  # type: ignore[arg-type]


class Rig:
    """A simulated unit on a pty (behind a stable symlink) and the agent's unit service on the other end."""

    def __init__(
        self, tmp_path: Path, script: SimulatorScript | None = None, max_version: int = 1, min_version: int = 1
    ) -> None:
        self.data_dir = tmp_path / "data"
        self.port = PtyTransport(link=tmp_path / "unit0")
        self.sim = UnitSimulator(
            self.port, script=script, settings=SIM_LINK, max_version=max_version, min_version=min_version
        )
        self.port.open()
        self.sim.start()
        self.book = ReceiptBook(None)
        self.service = UnitService(_config(self.port.port), self.data_dir, book=self.book)
        self.db = connect(self.data_dir / DB_FILENAME)
        ReceiptBook.migrate(self.db)  # as open_book does when the agent starts

    def start_agent(self) -> None:
        self.service = UnitService(_config(self.port.port), self.data_dir, book=self.book)
        self.service.start()
        wait_until(lambda: self.service.identity is not None)

    def ids(self) -> list[int]:
        return [e.exposure_id for e in list_exposures(self.db)]

    def uses(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM receipt_pending").fetchone()[0])

    def expose(self, n: int) -> None:
        for _ in range(n):
            assert self.sim.expose(duration_s=0.01) is not None

    def assert_exactly(self, n: int) -> None:
        wait_until(lambda: len(self.ids()) >= n)
        time.sleep(0.3)  # anything doubled would show up now
        assert self.ids() == list(range(1, n + 1))
        assert self.uses() == n
        assert self.service.link_status().counters.get("callback_errors", 0) == 0

    def close(self) -> None:
        self.service.stop()
        self.sim.stop()
        self.db.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    rig.start_agent()
    yield rig
    rig.close()


def test_exposures_status_and_faults(rig: Rig) -> None:
    rig.expose(5)
    rig.assert_exactly(5)
    rig.sim.raise_fault(0x0101)
    wait_until(lambda: bool(summary(rig.db).open_faults))
    assert rig.sim.expose() is None  # a faulted unit does not expose; the bridge has no say
    rig.sim.clear_faults()
    wait_until(lambda: not summary(rig.db).open_faults)
    view = summary(rig.db)
    assert view.units[0].state == "ready"
    wait_until(lambda: summary(rig.db).link is not None)
    link = _link(rig.db)
    assert link["state"] == "connected"
    assert "garbled" in link["counters"]
    assert abs(link["clock_offset_ms"]) < 1000


def test_noise_on_the_line(tmp_path: Path) -> None:
    rig = Rig(tmp_path, SimulatorScript(noise_rate=0.01, seed=7))
    try:
        rig.start_agent()
        rig.expose(20)
        rig.assert_exactly(20)
        assert rig.service.link_status().counters["garbled"] > 0
    finally:
        rig.close()


def test_pty_closed_and_reopened_mid_stream(rig: Rig) -> None:
    rig.expose(3)
    rig.port.unplug()
    rig.expose(3)  # the unit keeps exposing while its cable is out
    time.sleep(0.2)
    rig.port.plug()
    rig.expose(2)
    rig.assert_exactly(8)
    assert rig.service.link_status().counters["reconnects"] >= 2


def test_agent_down_while_the_unit_exposes(rig: Rig) -> None:
    rig.expose(2)
    rig.assert_exactly(2)
    rig.service.stop()
    rig.expose(4)
    rig.start_agent()  # a new agent process: resynchronises from its watermark
    rig.assert_exactly(6)


def test_first_contact_does_not_bill_earlier_exposures(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        # the unit's log from before the agent was installed (reports queued while unheard are still delivered)
        rig.sim.exposures.extend(ExposureCompleted(i, "panoramic", 70.0, 10.0, 100) for i in (1, 2, 3))
        rig.start_agent()
        rig.expose(1)
        wait_until(lambda: len(rig.ids()) == 1)
        time.sleep(0.3)
        assert rig.ids() == [4]
    finally:
        rig.close()


def test_unit_speaking_a_newer_protocol(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_version=2)
    try:
        rig.start_agent()
        rig.expose(4)
        rig.assert_exactly(4)
        assert rig.service.link_status().version == 1
    finally:
        rig.close()


def test_images_matched_to_exposures(rig: Rig) -> None:
    rig.expose(2)
    rig.assert_exactly(2)
    ds = image_dataset(rig.sim.identity, rig.sim.exposures[1])
    path = rig.data_dir / "dicom" / "x.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    facts = image_facts(ds.SOPInstanceUID, path)
    assert facts.device_serial == rig.sim.identity.serial
    assert facts.acquired_ms is not None
    assert abs(facts.acquired_ms - rig.sim.exposures[1].started_ms) < 1000
    record_instance(
        rig.db,
        read_header(ds, ds.file_meta.TransferSyntaxUID),
        path="dicom/x.dcm",
        size_bytes=1,
        calling_ae="SIM",
        received_at="2026-11-24T00:00Z",
    )
    wait_until(lambda: any(e.image_state == "matched" for e in list_exposures(rig.db)))
    matched = {e.exposure_id: e.sop_instance_uid for e in list_exposures(rig.db) if e.image_state == "matched"}
    assert matched == {2: ds.SOPInstanceUID}


def test_unreadable_image_header_is_recorded_not_fatal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    facts = image_facts("1.2.3", bad)
    assert (facts.device_serial, facts.acquired_ms) == ("", None)
    assert image_facts("1.2.4", tmp_path / "missing.dcm").acquired_ms is None


def test_database_is_shared_with_the_index(rig: Rig) -> None:
    tables = {r[0] for r in rig.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"instances", "unit_exposures", "unit_images", "unit_status", "unit_faults", "unit_link"} <= tables
    assert isinstance(rig.db, sqlite3.Connection)


def test_simulator_keeps_its_exposure_ids_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    for expected in ([1, 2], [3]):
        sim = UnitSimulator(PtyTransport(), settings=SIM_LINK, state_path=state)
        made = [sim.expose(duration_s=0.0) for _ in expected]
        assert [e.exposure_id for e in made if e is not None] == expected
        sim.stop()
    assert UnitSimulator(PtyTransport(), state_path=state).last_exposure_id() == 3


def test_dropped_acks_duplicated_and_late_frames_on_the_pty(tmp_path: Path) -> None:
    rng = random.Random(11)
    held: list[bytes] = []

    def unit_writes(data: bytes) -> bytes:
        """Duplicate some frames, hold some back and send them late (after later frames)."""
        out = b"".join(held)
        held.clear()
        roll = rng.random()
        if roll < 0.2:
            return out + data + data
        if roll < 0.35:
            held.append(data)
            return out
        return out + data

    def unit_reads(data: bytes) -> bytes:
        """The unit misses a third of the agent's ACKs."""
        parts = data.split(b"\x00")
        kept = []
        for part in parts:
            frame = None
            if part:
                with contextlib.suppress(FramingError):
                    frame = decode_frame(part)
            kept.append(b"" if frame is not None and frame.kind is FrameKind.ACK and rng.random() < 0.33 else part)
        return b"\x00".join(kept)

    rig = Rig(tmp_path)
    rig.port.tamper = unit_writes
    rig.port.tamper_in = unit_reads
    try:
        rig.start_agent()
        rig.expose(15)
        rig.assert_exactly(15)
        counters = rig.service.link_status().counters
        assert counters["duplicates"] > 0
        assert rig.sim.link.stats.retransmits > 0
    finally:
        rig.close()


def test_driver_setting_errors_name_the_key(tmp_path: Path) -> None:
    for spec, message in (("nonsense", "expected 'reference'"), ("no.such.module:make", "No module named")):
        service = UnitService(UnitConfig(port="loop://", driver=spec), tmp_path)
        with pytest.raises(ConfigError, match=f"unit.driver: .*{message}"):
            service.start()


def test_third_party_driver_is_loaded_by_name(tmp_path: Path) -> None:
    service = UnitService(UnitConfig(port="loop://", driver="firmware_bridge.driver:ReferenceDriver"), tmp_path)
    service.start()
    try:
        assert isinstance(service.driver, ReferenceDriver)
    finally:
        service.stop()


def test_incompatible_unit_is_reported_and_nothing_recorded(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_version=3, min_version=2)
    try:
        rig.service.start()
        wait_until(lambda: rig.service.link_status().state == "incompatible")
        rig.expose(2)
        wait_until(lambda: _link(rig.db).get("state") == "incompatible")
        assert "2..3" in _link(rig.db)["error"]
        assert rig.ids() == []
    finally:
        rig.close()


@pytest.mark.parametrize("agent_stopping", [True, False], ids=["agent-stopping", "agent-running"])
def test_a_unit_gone_while_the_agent_stops_is_a_normal_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, agent_stopping: bool
) -> None:
    """Ctrl-C on a terminal stops the agent and the simulator together; the simulator closing its pty first makes
    pyserial's read fail ("device reports readiness to read but returned no data"): no warning for that. The
    same hang-up while the agent runs is a warning, as a pulled cable is."""
    rig = Rig(tmp_path)
    stop_requested = threading.Event()
    rig.service = UnitService(_config(rig.port.port), rig.data_dir, book=rig.book, stop_requested=stop_requested)
    rig.service.start()
    try:
        wait_until(lambda: rig.service.identity is not None)
        wait_until(lambda: _link(rig.db).get("state") == "connected")
        caplog.set_level(logging.INFO, logger="edge.unit")
        caplog.clear()
        if agent_stopping:
            stop_requested.set()  # the agent's SIGINT handler ran...
        rig.sim.stop()  # ...and the simulator closed its pty
        wait_until(lambda: rig.service.link_status().state != "connected")
        wait_until(
            lambda: any(r.getMessage() == "unit link" and _fields(r).get("state") == "closed" for r in caplog.records)
        )
    finally:
        rig.service.stop()
        rig.db.close()
    warnings = [str(_fields(r)) for r in caplog.records if r.name == "edge.unit" and r.levelno >= logging.WARNING]
    if agent_stopping:
        assert warnings == []
        link = _link(connect(rig.data_dir / DB_FILENAME))
        assert link["state"] == "closed"
        assert not link["error"]
    else:
        assert warnings  # the port failed, then would not open again


def _link(conn: sqlite3.Connection) -> dict[str, Any]:
    """The unit link's part of the summary; empty before the link first reported."""
    link = summary(conn).link
    return {} if link is None else dataclasses.asdict(link)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = getattr(record, "btt_fields", {})  # edge.logs.event keeps them there
    return fields

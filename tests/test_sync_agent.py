"""The whole agent on a real broker: a radiograph sent with DCMTK's storescu is analysed, its receipt reaches the
relay, and no payload the box publishes carries the patient's name, id or any of the image's UIDs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread

from edge.db import DB_FILENAME, connect
from models.bundle import pack_bundle, write_bundle
from tests.conftest import Dcmtk, StartAgent, wait_until
from tests.mqtt_broker import RELAY_USER, MosquittoBroker, StubRelay
from tests.pipeline_helpers import MANIFEST, bright_spot_image, tiny_bundle, write_radiograph
from tests.receipts_helpers import make_box

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATIENT_NAME = "DOE^JANE^QUINN"
PATIENT_ID = "PID-4711-XR"


def _radiograph(path: Path) -> list[str]:
    """A radiograph of our test patient; returns every identifying value in it."""
    write_radiograph(path, bright_spot_image())
    ds = dcmread(path)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19710203"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.4711.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.999.4711.2"
    ds.AccessionNumber = "ACC-4711"
    ds.save_as(path, enforce_file_format=True)
    uids = [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
    return [PATIENT_NAME, "DOE", "QUINN", PATIENT_ID, "19710203", "ACC-4711", *uids, "1.2.826.0.1.3680043.10.999"]


def test_no_patient_data_leaves_the_box(start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path) -> None:
    box = make_box(tmp_path / "data")  # a provisioned box
    box.conn.close()
    device = box.identity.device_id
    broker = MosquittoBroker(tmp_path / "broker", users={device: "pw", RELAY_USER: "relay-pw"})
    broker.start()
    relay = StubRelay(broker, "relay-pw")
    try:
        bundle = tmp_path / "bundle"
        write_bundle(bundle, pack_bundle(MANIFEST, dict(tiny_bundle().files)))
        image = tmp_path / "patient.dcm"
        needles = _radiograph(image)
        agent = start_agent(
            box.data_dir,
            args=["--mqtt", broker.url(device, "pw")],
            env={
                "BTT_EDGE_PIPELINE_BUNDLE_PATH": str(bundle),
                "BTT_EDGE_PIPELINE_POLL_INTERVAL_S": "0.1",
                "BTT_EDGE_OUTBOX_FEED_INTERVAL_S": "0.1",
                "BTT_EDGE_RECEIPTS_SETTLE_MAX_RECEIPTS": "1",
                "BTT_EDGE_RECEIPTS_CHECK_INTERVAL_S": "0.1",
            },
        )
        sent = dcmtk.run("storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(agent.port), str(image))
        assert sent.returncode == 0, sent.stderr
        wait_until(
            lambda: all(relay.ids(kind) for kind in ("receipt:", "settlement:", "results:", "health:")),
            60,
            "the analysis receipt, its settlement, the results summary and a health report at the relay",
        )
        conn = connect(box.data_dir / DB_FILENAME, readonly=True)
        try:
            wait_until(
                lambda: not conn.execute("SELECT 1 FROM outbox WHERE state != 'done' LIMIT 1").fetchone(),
                30,
                "every outbox item acknowledged",
            )
            # the box does hold the patient (that is its job); it just never sends it
            assert conn.execute("SELECT count(*) FROM instances").fetchone()[0] == 1
        finally:
            conn.close()
        assert agent.terminate() == 0
        time.sleep(0.2)
    finally:
        relay.close()
        broker.stop()
    [receipt] = [relay.stored[i] for i in relay.ids("receipt:")]
    assert receipt["signed"]["kind"] == "analysis"
    assert receipt["signed"]["study_digest"]  # the study, as a salted digest only
    kinds = {topic.rsplit("/", 1)[1] for topic, _ in relay.payloads}
    assert {"certificate", "receipts", "settlements", "results", "health", "presence"} <= kinds
    for topic, payload in relay.payloads:
        text = payload.decode("utf-8")
        for needle in needles:
            assert needle not in text, f"{needle!r} leaked on {topic}"

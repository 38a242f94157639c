"""The pipeline inside ``btt-edge run``: images sent with DCMTK's storescu are analysed or skipped, durably."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from edge.db import DB_FILENAME, connect
from models.bundle import pack_bundle, write_bundle
from tests.conftest import Dcmtk, StartAgent
from tests.pipeline_helpers import MANIFEST, bright_spot_image, tiny_bundle, write_radiograph

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_stored_images_are_analysed_or_skipped(start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, pack_bundle(MANIFEST, dict(tiny_bundle().files)))
    pano = tmp_path / "pano.dcm"
    pano_uid = write_radiograph(pano, bright_spot_image())
    photo = Path(str(get_testdata_file("examples_rgb_color.dcm")))  # a colour ultrasound: not for this model
    agent = start_agent(
        tmp_path / "data",
        env={"BTT_EDGE_PIPELINE_BUNDLE_PATH": str(bundle), "BTT_EDGE_PIPELINE_POLL_INTERVAL_S": "0.1"},
    )
    done = dcmtk.run("storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(agent.port), str(pano), str(photo))
    assert done.returncode == 0, done.stderr
    conn = connect(agent.data_dir / DB_FILENAME, readonly=True)
    deadline = time.monotonic() + 60
    while True:
        states = dict(conn.execute("SELECT sop_instance_uid, pipeline_state FROM instances").fetchall())
        if len(states) == 2 and set(states.values()) <= {"analysed", "skipped", "failed"}:
            break
        assert time.monotonic() < deadline, f"not analysed in time: {states}\n{agent.log()}"
        time.sleep(0.2)
    assert states[pano_uid] == "analysed"
    [skipped_uid] = [uid for uid in states if uid != pano_uid]
    assert states[skipped_uid] == "skipped"
    row = conn.execute("SELECT * FROM pipeline_results WHERE sop_instance_uid = ?", (pano_uid,)).fetchone()
    assert row["backend"] == "onnxruntime-cpu"
    assert [f["kind"] for f in json.loads(row["findings_json"])] == ["caries"]
    reason = conn.execute("SELECT state_reason FROM instances WHERE sop_instance_uid = ?", (skipped_uid,)).fetchone()
    assert "modality US" in reason[0]
    conn.close()
    assert agent.terminate() == 0
    assert "backend selected" in agent.log()

"""Analysis yields to ingest inside ``btt-edge run``: a storescu batch is stored before any of it is analysed, and
every image is analysed once the association is done; an image sent on an association the sender holds open is
analysed once the association goes quiet, not when it closes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pynetdicom import AE

from edge.db import DB_FILENAME, connect
from models.bundle import pack_bundle, write_bundle
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dataset
from tests.conftest import Dcmtk, StartAgent
from tests.pipeline_helpers import MANIFEST, tiny_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 16
"""Generator panoramics (about 4 MB each) in one association: long enough that, without yielding, the first image
would be analysed (milliseconds with the tiny network) while the rest are still arriving."""


def _bundle_env(tmp_path: Path) -> dict[str, str]:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, pack_bundle(MANIFEST, dict(tiny_bundle().files)))
    return {
        "BTT_EDGE_PIPELINE_BUNDLE_PATH": str(bundle),
        "BTT_EDGE_PIPELINE_POLL_INTERVAL_S": "0.1",
        "BTT_EDGE_RESULTS_ENABLED": "false",
    }


def test_a_batch_is_stored_before_it_is_analysed_and_all_of_it_is_analysed(
    start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path
) -> None:
    image = generate(7)
    files = []
    for seed in range(BATCH):  # the same pixels, a distinct instance each (UIDs derive from the seed)
        files.append(tmp_path / f"pano{seed:02d}.dcm")
        synthetic_dataset(image, seed).save_as(files[-1], enforce_file_format=True)
    # the bound is the unit test's (test_pipeline_yield.py); here the batch is never cut into
    agent = start_agent(tmp_path / "data", env={**_bundle_env(tmp_path), "BTT_EDGE_PIPELINE_MAX_DEFER_S": "60"})
    done = dcmtk.run("storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(agent.port), *map(str, files))
    assert done.returncode == 0, done.stderr
    conn = connect(agent.data_dir / DB_FILENAME, readonly=True)
    deadline = time.monotonic() + 30
    while True:
        states = [s for (s,) in conn.execute("SELECT pipeline_state FROM instances")]
        if len(states) == BATCH and set(states) <= {"analysed", "skipped", "failed"}:
            break
        assert time.monotonic() < deadline, f"not analysed in time: {states}\n{agent.log()}"
        time.sleep(0.1)
    assert states == ["analysed"] * BATCH
    [(last_received, first_claimed)] = conn.execute(
        "SELECT (SELECT MAX(received_at) FROM instances), (SELECT MIN(updated_at) FROM pipeline_attempts)"
    )
    conn.close()
    # the index's timestamps are ISO 8601 UTC with milliseconds: they compare as strings
    assert first_claimed >= last_received, "analysis started while the batch was still arriving"
    assert agent.terminate() == 0
    assert "analysis yielded to ingest" in agent.log()


def test_an_image_on_an_association_held_open_is_analysed_once_it_goes_quiet(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(tmp_path / "data", env={**_bundle_env(tmp_path), "BTT_EDGE_PIPELINE_MAX_DEFER_S": "60"})
    ds = synthetic_dataset(generate(8), 8)
    ae = AE(ae_title="UNIT")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", agent.port, ae_title="BTT_EDGE")
    assert assoc.is_established
    conn = connect(agent.data_dir / DB_FILENAME, readonly=True)
    try:
        assert assoc.send_c_store(ds).Status == 0
        sent = time.monotonic()
        deadline = sent + 10  # ingest_quiet_s (0.3 s) after the image, far below max_defer_s
        while [tuple(r) for r in conn.execute("SELECT pipeline_state FROM instances")] != [("analysed",)]:
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.05)
        assert assoc.is_established  # analysed while the unit still holds the association
    finally:
        assoc.release()
        conn.close()
    assert agent.terminate() == 0

"""End to end on loopback: storescu sends a radiograph to ``btt-edge run --forward PACS@...``; DCMTK's storescp
plays the PACS; the SR and the overlay arrive and validate. Then the PACS goes away, results queue, the PACS comes
back, and they arrive."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from edge.db import DB_FILENAME, connect
from models.bundle import pack_bundle, write_bundle
from tests.conftest import Dcmtk, StartAgent, free_port, wait_until
from tests.pipeline_helpers import MANIFEST, bright_spot_image, tiny_bundle
from tests.results_helpers import (
    dciodvfy_errors,
    received,
    simulated_panoramic,
    source_image,
    storescp,
    synthetic_panoramic,
    with_pixels,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _results(data_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "edge", "results", "list", "--data-dir", str(data_dir), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def _send(dcmtk: Dcmtk, port: int, path: Path) -> None:
    out = dcmtk.run("storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(port), str(path))
    assert out.returncode == 0, out.stderr


def _bundle(tmp_path: Path) -> Path:
    """The tiny test network, packed as a bundle in ``tmp_path``."""
    bundle_dir = tmp_path / "bundle"
    write_bundle(bundle_dir, pack_bundle(MANIFEST, tiny_bundle().files))
    return bundle_dir


def _env(tmp_path: Path, *, backoff_initial_s: float, backoff_max_s: float) -> dict[str, str]:
    """The agent's environment: the tiny bundle on the CPU, polled every 0.1 s; results retried with this backoff."""
    return {
        "BTT_EDGE_PIPELINE_BUNDLE_PATH": str(_bundle(tmp_path)),
        "BTT_EDGE_PIPELINE_BACKEND": "onnxruntime-cpu",
        "BTT_EDGE_PIPELINE_POLL_INTERVAL_S": "0.1",
        "BTT_EDGE_RESULTS_BACKOFF_INITIAL_S": str(backoff_initial_s),
        "BTT_EDGE_RESULTS_BACKOFF_MAX_S": str(backoff_max_s),
    }


def test_results_reach_the_pacs_and_survive_its_outage(start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path) -> None:
    pacs_port, pacs_dir = free_port(), tmp_path / "pacs"
    env = {
        **_env(tmp_path, backoff_initial_s=0.5, backoff_max_s=1),
        # a development identity made at the first start: its device id is the box's serial number in the results
        "BTT_EDGE_RECEIPTS_DEV_MODE": "true",
        "BTT_EDGE_RECEIPTS_DEVICE_ID": "btt-e2e-box",
    }
    data = tmp_path / "data"
    first = with_pixels(synthetic_panoramic(), bright_spot_image(200, 400))  # the generator's header (Laterality B)
    first.save_as(tmp_path / "first.dcm", enforce_file_format=True)
    with storescp(pacs_dir, pacs_port):
        agent = start_agent(data, args=["--forward", f"PACS@127.0.0.1:{pacs_port}"], env=env)
        _send(dcmtk, agent.port, tmp_path / "first.dcm")
        wait_until(lambda: len(received(pacs_dir)) == 2, 60, "the SR and the overlay at the PACS")
    files = received(pacs_dir)
    kinds = {dcmread(p).Modality: p for p in files.values()}
    assert set(kinds) == {"SR", "OT"}
    for path in files.values():
        assert dciodvfy_errors(path) == []
        ds = dcmread(path)
        assert (ds.PatientID, ds.PatientName, ds.StudyInstanceUID) == (
            first.PatientID.rstrip(),
            first.PatientName,
            first.StudyInstanceUID,
        )
        assert (ds.Manufacturer, ds.DeviceSerialNumber) == ("BTT Edge", "btt-e2e-box")
    sr = dcmread(kinds["SR"])
    assert "caries" in str(sr.ContentSequence)  # the tiny model's finding, coded from its manifest
    listed = _results(data)
    assert {d["kind"] for d in listed} == {"sr", "overlay"}
    assert {(x["destination"], x["state"]) for d in listed for x in d["deliveries"]} == {
        (f"PACS@127.0.0.1:{pacs_port}", "sent")
    }
    conn = connect(data / DB_FILENAME, readonly=True)
    assert (
        conn.execute(
            "SELECT pipeline_state FROM instances WHERE sop_instance_uid = ?", (first.SOPInstanceUID,)
        ).fetchone()[0]
        == "forwarded"
    )

    # the PACS is down: results queue with their error, and arrive when it is back
    second = source_image("PX", pixels=bright_spot_image(200, 400), seed=2)
    second.save_as(tmp_path / "second.dcm", enforce_file_format=True)
    _send(dcmtk, agent.port, tmp_path / "second.dcm")

    def queued() -> bool:
        pending = [x for d in _results(data) if d["source_sop_uid"] == second.SOPInstanceUID for x in d["deliveries"]]
        return len(pending) == 2 and all(x["state"] == "pending" and x["attempts"] >= 1 for x in pending)

    wait_until(queued, 60, "results queued while the PACS is down", interval=0.1)
    assert "cannot connect" in json.dumps(_results(data))
    with storescp(pacs_dir, pacs_port):
        wait_until(lambda: len(received(pacs_dir)) == 4, 30, "the queued results at the PACS")
    assert all(x["state"] == "sent" for d in _results(data) for x in d["deliveries"])
    assert agent.terminate() == 0


def test_kill_9_with_results_queued_loses_nothing_and_sends_nothing_twice(
    start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path
) -> None:
    pacs_port, pacs_dir = free_port(), tmp_path / "pacs"
    env = _env(tmp_path, backoff_initial_s=0.2, backoff_max_s=0.5)
    data, args = tmp_path / "data", ["--forward", f"PACS@127.0.0.1:{pacs_port}"]
    agent = start_agent(data, args=args, env=env)
    image = source_image("PX", pixels=bright_spot_image(150, 300))
    image.save_as(tmp_path / "pano.dcm", enforce_file_format=True)
    _send(dcmtk, agent.port, tmp_path / "pano.dcm")
    wait_until(
        lambda: sum(x["attempts"] >= 1 for d in _results(data) for x in d["deliveries"]) == 2,
        60,
        "both results queued",
        interval=0.1,
    )
    agent.kill()
    with storescp(pacs_dir, pacs_port, unique=True):
        start_agent(data, port=agent.port, args=args, env=env)
        wait_until(lambda: len(list(pacs_dir.iterdir())) == 2, 60, "the results after the restart")
        time.sleep(1.0)  # anything sent twice would arrive by now
    assert len(list(pacs_dir.iterdir())) == 2  # unique file names: a second copy would be a third file
    assert all(x["state"] == "sent" for d in _results(data) for x in d["deliveries"])


def test_configured_destination_gets_originals_and_the_presentation_state(
    start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path
) -> None:
    bundle_dir = _bundle(tmp_path)
    pacs_port, pacs_dir = free_port(), tmp_path / "pacs"
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[pipeline]\nbundle_path = "{bundle_dir}"\nbackend = "onnxruntime-cpu"\npoll_interval_s = 0.1\n'
        f'[[results.destinations]]\nae_title = "ARCHIVE"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
        'kinds = ["original", "gsps", "sr"]\n'
    )
    image = with_pixels(simulated_panoramic(), bright_spot_image(150, 300))  # the unit simulator's header
    image.save_as(tmp_path / "pano.dcm", enforce_file_format=True)
    with storescp(pacs_dir, pacs_port, ae_title="ARCHIVE"):
        agent = start_agent(tmp_path / "data", args=["--config", str(config)])
        _send(dcmtk, agent.port, tmp_path / "pano.dcm")
        wait_until(lambda: len(received(pacs_dir)) == 3, 60, "the original, the GSPS and the SR at the archive")
    files = received(pacs_dir)
    modalities = {dcmread(p).Modality for p in files.values()}
    assert modalities == {"PX", "PR", "SR"}
    assert files[image.SOPInstanceUID].read_bytes().endswith(image.PixelData)  # the original, as it came
    for path in files.values():
        if dcmread(path).Modality != "PX":
            assert dciodvfy_errors(path) == []

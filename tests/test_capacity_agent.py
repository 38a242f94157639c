"""The whole agent: a shared job running in the worker is paused by a real clinical image (DCMTK storescu), the
image is analysed, then the job resumes and completes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pydicom
import pytest

from edge.agent import build_agent
from edge.capacity import CapacityService
from edge.capacity.runner import process_state
from edge.capacity.state import open_offer
from edge.config import AgentConfig, with_overrides
from edge.db import DB_FILENAME, connect
from edge.receipts.identity import KeyFiles, provision
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dicom_bytes
from protocol.capacity import JOB, sign
from protocol.clock import now_ms
from protocol.keys import generate_key
from tests.conftest import Dcmtk, free_port, wait_until
from tests.test_capacity import _batch, _blob, _bundle_tar

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _offered(conn: sqlite3.Connection) -> bool:
    try:
        return open_offer(conn) is not None
    except sqlite3.OperationalError:  # the capacity tables are created as the agent starts
        return False


def test_clinical_image_pauses_shared_job_in_running_agent(tmp_path: Path, dcmtk: Dcmtk) -> None:
    data_dir, blobs = tmp_path / "data", tmp_path / "blobs"
    blobs.mkdir()
    provision(KeyFiles(data_dir / "keys"), manufacturer=generate_key())
    relay = generate_key()
    port = free_port()
    config = with_overrides(
        AgentConfig(),
        agent={"data_dir": str(data_dir)},
        dicom={"port": port, "bind_address": "127.0.0.1"},
        pipeline={"backend": "onnxruntime-cpu", "threads": 1, "poll_interval_s": 0.05},
        results={"enabled": False},
        control={"enabled": False},
        capacity={
            "enabled": True, "relay_key": relay.public.key.hex(), "blob_url": blobs.as_uri(), "opening_hours": [],
            "idle_minutes": 0.0, "max_load": 64.0, "resume_after_s": 0.5,
        },
    )  # fmt: skip
    agent = build_agent(config)
    capacity = next(s for s in agent.services if isinstance(s, CapacityService))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    conn = connect(data_dir / DB_FILENAME)
    try:
        wait_until(lambda: _offered(conn), 60, "an offer")
        offer = open_offer(conn)
        assert offer is not None
        fields = {
            "job_id": "agent-job", "device": offer["signed"]["device"], "offer_id": offer["signed"]["offer_id"],
            "bundle": _blob(blobs, _bundle_tar()), "batch": _blob(blobs, _batch(12)), "items": 12,
            "price_per_item_micro": offer["signed"]["price_per_item_micro"], "issued_ms": now_ms(),
            "expires_ms": now_ms() + 600_000,
        }  # fmt: skip
        capacity.submit(json.dumps(sign(JOB, fields, relay)).encode())
        wait_until(lambda: capacity._job is not None, 60, "the job worker")
        worker = capacity._job
        assert worker is not None
        time.sleep(0.5)
        image = tmp_path / "pano.dcm"
        image.write_bytes(synthetic_dicom_bytes(generate(7), 7))
        uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
        sent = dcmtk.run("storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(port), str(image))
        assert sent.returncode == 0, sent.stderr
        assert process_state(worker.pid) == "T"  # stopped while the image waits for (or is in) analysis
        assert capacity.preemptions

        def analysed() -> bool:
            try:
                return (
                    conn.execute("SELECT 1 FROM pipeline_results WHERE sop_instance_uid = ?", (uid,)).fetchone()
                    is not None
                )
            except sqlite3.OperationalError:
                return False

        wait_until(analysed, 120, "the clinical result")
        state = "SELECT state FROM capacity_jobs WHERE job_id = 'agent-job'"
        wait_until(lambda: conn.execute(state).fetchone()[0] == "done", 180, "the resumed job to finish")
    finally:
        conn.close()
        agent.shutdown()
        runner.join(timeout=30)

"""``btt-edge simulate-unit --pty`` and ``btt-edge run --serial`` as processes, with real DICOM peers."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.unit.simulator import ImageSender, image_dataset
from firmware_bridge.messages import ExposureCompleted, Identify
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

BTT_EDGE = [sys.executable, "-m", "edge"]


def _simulator(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*BTT_EDGE, "simulate-unit", "--pty", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    path = proc.stdout.readline().strip()
    return proc, path


def _terminate(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=20)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


def test_simulate_unit_prints_its_pty_and_stops_on_sigterm() -> None:
    proc, path = _simulator()
    try:
        assert stat.S_ISCHR(os.stat(path).st_mode)
        assert path.startswith("/dev/pts/")
    finally:
        assert _terminate(proc) == 0


def test_bad_send_to_is_a_clear_error() -> None:
    done = subprocess.run(
        [*BTT_EDGE, "simulate-unit", "--pty", "--send-to", "nonsense"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "AE@HOST:PORT" in done.stderr


def test_image_sender_stores_to_dcmtk_storescp(tmp_path: Path) -> None:
    port = free_port()
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "-od", str(tmp_path), "-aet", "PEER", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sender = ImageSender.parse(f"PEER@127.0.0.1:{port}")
        exposure = ExposureCompleted(1, "panoramic", 70.0, 10.0, 14000, 3.0, int(time.time() * 1000))
        sender.submit(Identify("Sim", "SN-9", "1.0", "BTT"), exposure)
        wait_until(lambda: sender.sent + sender.failed > 0)
        sender.stop()
        assert sender.sent == 1
        assert len(list(tmp_path.iterdir())) == 1
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def test_simulated_image_passes_dciodvfy(tmp_path: Path) -> None:
    exposure = ExposureCompleted(3, "panoramic", 70.0, 10.0, 14000, 3.0, 1_700_000_000_000)
    path = tmp_path / "image.dcm"
    image_dataset(Identify("Sim", "SN-9", "1.0", "BTT"), exposure).save_as(path, enforce_file_format=True)
    done = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


@pytest.mark.slow
def test_demo_path_unit_and_agent_processes(tmp_path: Path) -> None:
    """The demo's wiring: the unit on a pty, C-STORE to the agent, the agent on --serial; pulled cable too."""
    dicom_port = free_port()
    sim, path = _simulator(
        "--link",
        str(tmp_path / "unit0"),
        "--exposure-interval",
        "1.0",
        "--exposure-time",
        "0.05",
        "--unplug-interval",
        "2.5",
        "--unplug-duration",
        "0.3",
        "--send-to",
        f"BTT_EDGE@127.0.0.1:{dicom_port}",
    )
    env = {
        **os.environ,
        "BTT_EDGE_UNIT_MATCH_INTERVAL_S": "0.2",
        "BTT_EDGE_UNIT_REOPEN_INITIAL_S": "0.05",
        "BTT_EDGE_UNIT_REOPEN_MAX_S": "0.2",
    }
    data = tmp_path / "data"
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log_file:  # a file, not a pipe: a full pipe would stall the agent's logging
        agent = subprocess.Popen(
            [*BTT_EDGE, "run", "--data-dir", str(data), "--port", str(dicom_port), "--serial", path],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            text=True,
        )
    try:
        db = data / "edge.db"
        wait_until(db.exists)

        def matched() -> int:
            with sqlite3.connect(db) as conn:
                try:
                    row = conn.execute("SELECT COUNT(*) FROM unit_exposures WHERE image_state = 'matched'").fetchone()
                except sqlite3.OperationalError:
                    return 0
            return int(row[0])

        wait_until(lambda: matched() >= 4, timeout=90)
    finally:
        assert _terminate(sim) == 0
        agent_rc = _terminate(agent)
    log = log_path.read_text()
    assert agent_rc == 0, log
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT exposure_id FROM unit_exposures ORDER BY exposure_id")]
        reconnects = conn.execute("SELECT counters FROM unit_link").fetchone()[0]
    assert ids == list(range(1, len(ids) + 1))
    assert '"reconnects": ' in reconnects
    assert "unit handshake" in log

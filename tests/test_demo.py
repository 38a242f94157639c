"""``scripts/demo`` end to end, as a newcomer runs it (no stdin), in a temporary directory on free ports.

It provisions a DEVELOPMENT identity, starts its own Mosquitto and relay, the unit simulator and the agent; the test
waits until the relay's clinic API, asked the way the demo says, shows a receipt of the demo's device, then stops
the demo with SIGTERM and checks it stopped everything it started. ``scripts/setup`` is skipped
(``BTT_DEMO_SKIP_SETUP=1``): the suite runs after it (``scripts/check``), and it must not reinstall under a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo"


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _live_processes_naming(path: Path) -> dict[int, str]:
    """Pid -> command line of the live (not zombie) processes whose arguments name ``path``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(path).encode() in cmdline and state != "Z":
            found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_demo_shows_a_receipt_arriving_at_its_relay_and_stops_everything(tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    mqtt_port, api_port, dicom_port = _ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BTT_EDGE_", "BTT_DEMO_", "BTT_RELAY_"))}
    env.update(
        BTT_DEMO_SKIP_SETUP="1",
        BTT_DEMO_DIR=str(data),
        BTT_DEMO_EXPOSURE_INTERVAL="2",
        BTT_DEMO_MQTT_PORT=str(mqtt_port),
        BTT_DEMO_API_PORT=str(api_port),
        BTT_EDGE_DICOM_PORT=str(dicom_port),
    )
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        # arguments after the script's name go on to `btt-edge run`
        demo = subprocess.Popen(
            ["bash", str(DEMO), "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        receipts: list[Any] = []
        deadline = time.monotonic() + 60
        while not receipts:
            assert demo.poll() is None, f"the demo exited ({demo.returncode}):\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no receipt at the relay within 60 s:\n{log_path.read_text()}"
            time.sleep(0.5)
            token_file, cert_file = data / "relay" / "token", data / "keys" / "device.cert.json"
            if not (token_file.exists() and cert_file.exists()):
                continue
            token = token_file.read_text().strip()
            device = json.loads(cert_file.read_text())["signed"]["device"]
            url = f"http://127.0.0.1:{api_port}/v1/devices/{device}/receipts"
            try:
                receipts = _get(url, token)["receipts"]
            except (urllib.error.URLError, OSError):
                continue
        text = log_path.read_text()
        assert f"curl -s -H 'Authorization: Bearer {token}' {url}" in text  # what the newcomer is told to run
        assert "DEVELOPMENT" in text
        assert receipts[0]["seq"] == 1
        signed = receipts[0]["envelope"]["signed"]
        assert signed["device"] == device
        assert signed["kind"] in ("exposure", "analysis")
        assert any(json.loads(line).get("event") == "agent ready" for line in text.splitlines() if line[:1] == "{")

        demo.send_signal(signal.SIGTERM)  # to the script only: it stops what it started
        assert demo.wait(60) == 143
        assert _live_processes_naming(data) == {}
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        for pid in _live_processes_naming(data):  # never leave a broker or relay behind a failed test
            os.kill(pid, signal.SIGKILL)

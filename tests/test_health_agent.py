"""The agent as a process beside the unit simulator on a pty (``btt-edge run --serial``, as scripts/demo runs it):
doctor asks the running agent and agrees with ``/healthz``; Ctrl-C stops both without a warning and leaves every
file of the data directory private, whatever the umask the agent was started with."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BTT_EDGE = [sys.executable, "-m", "edge"]


class AgentRig:
    """A simulated unit on a pty and ``btt-edge run --serial <pty>`` with ``/healthz`` on a free port."""

    def __init__(self, tmp_path: Path, *, umask: int = 0o022, sim_args: tuple[str, ...] = ()) -> None:
        self.data = tmp_path / "data"
        self.log_path = tmp_path / "agent.log"
        self.dicom_port, self.metrics_port = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")}
        # what the configuration says (doctor reads the same); the unit's port is only on the agent's command line
        self.env = {
            **base,
            "BTT_EDGE_DICOM_PORT": str(self.dicom_port),
            "BTT_EDGE_METRICS_PORT": str(self.metrics_port),
            "BTT_EDGE_RECEIPTS_DEV_MODE": "true",
            "BTT_EDGE_UNIT_MATCH_INTERVAL_S": "0.2",
            "BTT_EDGE_UNIT_REOPEN_INITIAL_S": "0.05",
            "BTT_EDGE_UNIT_REOPEN_MAX_S": "0.2",
        }
        self.sim = subprocess.Popen(
            [*BTT_EDGE, "simulate-unit", "--pty", *sim_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=base,
        )
        assert self.sim.stdout is not None
        self.pty = self.sim.stdout.readline().strip()
        with self.log_path.open("w") as log_file:  # a file, not a pipe: a full pipe would stall the agent
            self.agent = subprocess.Popen(
                [*BTT_EDGE, "run", "--data-dir", str(self.data), "--serial", self.pty],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                umask=umask,
            )

    def healthz(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def check(self, name: str) -> dict[str, str] | None:
        try:
            _, doc = self.healthz()
        except (urllib.error.URLError, ConnectionError):
            return None
        return next((c for c in doc["checks"] if c["name"] == name), None)

    def unit_link(self, status: str) -> bool:
        check = self.check("unit link")
        return check is not None and check["status"] == status

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        wait_until(condition, 60, lambda: f"{what}; the agent's log:\n{self.log_path.read_text()[-4000:]}")

    def doctor(self) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [*BTT_EDGE, "doctor", "--data-dir", str(self.data), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
            check=False,
        )
        return done.returncode, json.loads(done.stdout)

    def close(self) -> None:
        for proc in (self.agent, self.sim):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
        if self.sim.stdout is not None:
            self.sim.stdout.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[AgentRig]:
    rig = AgentRig(tmp_path)
    yield rig
    rig.close()


def _statuses(doc: dict[str, Any], names: set[str]) -> Counter[tuple[str, str]]:
    return Counter((c["name"], c["status"]) for c in doc["checks"] if c["name"] in names)


def test_doctor_asks_the_running_agent_and_agrees_with_healthz(rig: AgentRig) -> None:
    rig.wait(lambda: rig.unit_link("ok"), "the unit link")
    code, doctor = rig.doctor()
    status, health = rig.healthz()
    doctor_checks = {c["name"]: c for c in doctor["checks"]}
    assert doctor_checks["unit link"]["status"] == "ok"
    assert doctor_checks["unit link"]["detail"].startswith(f"{rig.pty}: connected"), doctor_checks["unit link"]
    assert "serial port" not in doctor_checks  # not "no unit link configured": the agent runs one
    names = {c["name"] for c in health["checks"]}
    assert _statuses(doctor, names) == _statuses(health, names)  # the same checks, the same verdicts
    assert (code == 0, status == 200) == (True, True), (doctor, health)

    rig.sim.send_signal(signal.SIGTERM)  # the unit goes away: both say so, and both fail
    rig.sim.wait(timeout=30)
    rig.wait(lambda: rig.unit_link("fail"), "the unit link down")
    code, doctor = rig.doctor()
    status, health = rig.healthz()
    assert (code, status) == (1, 503)
    assert [c["status"] for c in doctor["checks"] if c["name"] == "unit link"] == ["fail"]
    assert _statuses(doctor, names) == _statuses(health, names)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_ctrl_c_stops_without_a_warning_and_leaves_the_data_private(tmp_path: Path, umask: int) -> None:
    rig = AgentRig(tmp_path, umask=umask, sim_args=("--exposure-interval", "0.5", "--exposure-time", "0.05"))
    try:
        rig.wait(lambda: rig.unit_link("ok"), "the unit link")
        rig.wait(lambda: (rig.data / "incoming").is_dir() and (rig.data / "edge.db-wal").exists(), "the store")
        time.sleep(1.5)  # a few exposures recorded
        # Ctrl-C on the terminal: SIGINT to both, the agent's first
        rig.agent.send_signal(signal.SIGINT)
        rig.sim.send_signal(signal.SIGINT)
        assert rig.agent.wait(timeout=60) == 0
        rig.sim.wait(timeout=30)
    finally:
        rig.close()
    log = rig.log_path.read_text()
    assert "exposure recorded" in log
    assert [line for line in log.splitlines() if "WARNING" in line and " unit " in line] == []
    assert "device disconnected" not in log
    loose = []
    for path in [rig.data, *rig.data.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        allowed = 0o710 if path == rig.data else 0o700 if path.is_dir() else 0o600
        if path.is_symlink() or path.is_socket() or mode & ~allowed:
            loose.append(f"{path.relative_to(rig.data)} {mode:04o}")
    assert loose == []
    assert len(list(rig.data.rglob("*"))) > 5  # keys, database, store directories: there was something to check

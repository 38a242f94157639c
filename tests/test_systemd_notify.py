"""edge.systemd and the agent's notifications: READY=1, WATCHDOG=1, STOPPING=1 on a real AF_UNIX datagram socket."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.config import AgentConfig
from edge.systemd import Notifier, notifier_from_env, watchdog_interval_s
from tests.conftest import Dcmtk, StartAgent


class _Service:
    name = "fake"

    def __init__(self) -> None:
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def _receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = notifier_from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert watchdog_interval_s({}) is None


def test_notifier_sends_one_datagram_per_state(notify_socket: socket.socket) -> None:
    notifier = Notifier(notify_socket.getsockname())
    assert notifier.ready("2 services running")
    assert _receive(notify_socket) == ["READY=1", "STATUS=2 services running"]
    assert notifier.watchdog()
    assert _receive(notify_socket) == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert _receive(notify_socket) == ["STOPPING=1"]


def test_abstract_namespace_address() -> None:
    name = f"btt-edge-test-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).ready()
        assert _receive(sock) == ["READY=1"]


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert not Notifier(str(tmp_path / "gone")).watchdog()
    assert "systemd notification failed" in caplog.text


def test_watchdog_interval_is_half_the_timeout_for_our_pid_only() -> None:
    import os

    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_agent_reports_ready_pets_the_watchdog_and_reports_stopping(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: a WATCHDOG=1 every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    service = _Service()
    agent = Agent(AgentConfig(), [service], notifier=Notifier(notify_socket.getsockname()))
    runner = threading.Thread(target=agent.run)
    runner.start()
    try:
        assert _receive(notify_socket) == ["READY=1", "STATUS=1 services running"]
        assert service.running
        assert _receive(notify_socket) == ["WATCHDOG=1"]
        assert _receive(notify_socket) == ["WATCHDOG=1"]
    finally:
        agent.shutdown()
        runner.join(5)
    states = []
    while (line := _receive(notify_socket)) != ["STOPPING=1"]:
        states.append(line)
    assert all(state == ["WATCHDOG=1"] for state in states)
    assert not service.running


@pytest.mark.integration
@pytest.mark.slow
def test_btt_edge_run_speaks_the_notify_protocol(
    start_agent: StartAgent, dcmtk: Dcmtk, notify_socket: socket.socket, tmp_path: Path
) -> None:
    """The real ``btt-edge run`` as systemd's Type=notify with WatchdogSec=1s would run it: READY=1 once it
    accepts associations (DCMTK's echoscu), WATCHDOG=1 at half the interval, STOPPING=1 and exit 0 on SIGTERM."""
    env = {
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "1000000",
        "BTT_EDGE_PIPELINE_ENABLED": "false",
    }
    agent = start_agent(tmp_path / "data", env=env)
    notify_socket.settimeout(60)
    assert _receive(notify_socket)[0] == "READY=1"
    assert dcmtk.echo(agent.port)
    started = time.monotonic()
    assert _receive(notify_socket) == ["WATCHDOG=1"]
    assert _receive(notify_socket) == ["WATCHDOG=1"]
    assert time.monotonic() - started < 3  # every 0.5 s, well inside the 1 s watchdog
    agent.process.send_signal(signal.SIGTERM)
    while (line := _receive(notify_socket)) != ["STOPPING=1"]:
        assert line == ["WATCHDOG=1"]
    assert agent.terminate() == 0, agent.log()

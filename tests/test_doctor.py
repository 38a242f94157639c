"""``btt-edge doctor``: each check against the real thing it checks (a port someone holds, a pty as the serial
port, Mosquitto as the broker), and the command's output and exit code."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import AgentConfig, with_overrides
from edge.ops import doctor, health
from edge.ops.doctor import CLOCK_FLOOR, Check, render, run_checks
from tests.conftest import free_port
from tests.mqtt_broker import MosquittoBroker


def _config(data: Path, **sections: dict[str, object]) -> AgentConfig:
    return with_overrides(AgentConfig(), agent={"data_dir": str(data)}, **sections)


def _by_name(checks: Iterator[Check] | list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "edge", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, **(env or {})},
        check=False,
    )


def test_port_held_by_another_program_is_a_failure(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        check = doctor._port("dicom port", "127.0.0.1", port, False, "[dicom] port")
    assert check.status == "fail"
    assert "in use by another program" in check.detail
    assert f"sport = :{port}" in check.fix
    assert doctor._port("dicom port", "127.0.0.1", free_port(), False, "[dicom] port").status == "ok"


def test_serial_port_checks_with_a_pty(tmp_path: Path) -> None:
    main, secondary = pty.openpty()
    try:
        name = os.ttyname(secondary)
        assert doctor._serial(_config(tmp_path, unit={"port": name})).status == "ok"
    finally:
        os.close(main)
        os.close(secondary)
    missing = doctor._serial(_config(tmp_path, unit={"port": "/dev/serial/by-id/usb-nothing"}))
    assert missing.status == "fail"
    assert "/dev/serial/by-id" in missing.fix
    assert doctor._serial(_config(tmp_path)).status == "ok"  # no unit link configured


@pytest.mark.integration
def test_broker_reachable_and_not(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker", users={"dev": "pw"}) as broker:
        broker.start()
        up = doctor._broker(_config(tmp_path, sync={"url": broker.url("dev", "pw")}))
        assert up.status == "ok", up.detail
        url = broker.url("dev", "pw")
    down = doctor._broker(_config(tmp_path, sync={"url": url}))
    assert down.status == "warn"  # the outbox queues meanwhile; the running agent says the same of its link
    assert "cannot be reached" in down.detail
    missing_ca = doctor._broker(_config(tmp_path, sync={"url": url, "ca_file": str(tmp_path / "none.pem")}))
    assert missing_ca.status == "fail"


def test_clock() -> None:
    assert health.clock_check(lambda: CLOCK_FLOOR - 1, lambda: True).status == "fail"
    assert health.clock_check(lambda: CLOCK_FLOOR + 10, lambda: False).status == "warn"
    ok = health.clock_check(lambda: CLOCK_FLOOR + 10, lambda: True)
    assert ok.status == "ok"
    assert "NTP synchronised" in ok.detail


def test_disk_below_the_reserve_and_missing_data_dir(tmp_path: Path) -> None:
    checks = _by_name(health.data_dir_checks(_config(tmp_path, dicom={"min_free_mb": 10**12})))
    assert checks["disk"].status == "fail"
    assert "images are refused" in checks["disk"].detail
    missing = _by_name(health.data_dir_checks(_config(tmp_path / "nope")))
    assert missing["data directory"].status == "fail"
    assert "install -d" in missing["data directory"].fix
    assert "-m 0710" in missing["data directory"].fix  # private; the group reaches only the control socket


def test_model_and_backend_say_which_backend_and_why(tmp_path: Path) -> None:
    checks = _by_name(doctor._model(_config(tmp_path)))
    assert checks["model"].status == "ok"
    assert "btt-reference-dental-pano" in checks["model"].detail
    assert checks["backend"].status == "ok"
    assert re.match(r"onnxruntime-cpu \((fp32|int8)\) will run", checks["backend"].detail)
    assert "tensorrt:" in checks["backend"].detail  # why the better backends are not used
    broken = _by_name(doctor._model(_config(tmp_path, pipeline={"bundle_path": str(tmp_path / "none")})))
    assert broken["model"].status == "fail"
    assert "ota rollback" in broken["model"].fix


def test_every_extra_bundle_is_checked_too(tmp_path: Path) -> None:
    """A bundle in [pipeline] extra_bundles that does not load fails doctor as the primary would, naming the key."""
    checks = list(doctor._model(_config(tmp_path, pipeline={"extra_bundles": [str(tmp_path / "no-such-bundle")]})))
    assert [c.name for c in checks] == ["model", "backend", "extra model"]
    assert checks[0].status == checks[1].status == "ok"
    assert checks[2].status == "fail"
    assert "extra_bundles" in checks[2].fix


def test_keys(tmp_path: Path) -> None:
    unprovisioned = health.keys_check(_config(tmp_path))
    assert unprovisioned.status == "fail"
    assert health.keys_check(_config(tmp_path, receipts={"dev_mode": True})).status == "warn"
    assert health.keys_check(_config(tmp_path, receipts={"enabled": False})).status == "ok"
    assert not (tmp_path / "keys").exists()  # doctor only looks


def test_the_fix_for_an_unprovisioned_box_is_a_command_that_works(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fix = health.keys_check(_config(data)).fix
    command = re.search(r"btt-edge provision --data-dir (\S+) --dev", fix)
    assert command is not None, fix
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")}
    subprocess.run(
        [sys.executable, "-m", "edge", "provision", "--data-dir", command.group(1), "--dev"],
        capture_output=True,
        timeout=120,
        env=environ,
        check=True,
    )
    assert health.keys_check(_config(data)).status == "ok"
    assert "--manufacturer-key M.key" in fix  # and the clinic's way


def test_render_lists_fixes_for_problems() -> None:
    text = render([Check("a", "ok", "fine", "unused"), Check("b", "fail", "broken", "do this")])
    assert "[ OK ] a" in text
    assert "[FAIL] b" in text
    assert "fix: do this" in text
    assert "unused" not in text
    assert text.endswith("1 problem(s), 0 warning(s)")


def test_doctor_on_a_fresh_box_without_an_agent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    port = str(free_port())
    checks = _by_name(run_checks(_config(data, dicom={"port": int(port)}), "test"))
    assert checks["agent"].status == "warn"
    assert checks["dicom port"].status == "ok"
    assert checks["python"].status == "ok"  # platform checks (edge.jetson); off a Jetson only the generic ones
    assert "jetson" not in checks
    result = _doctor("--data-dir", str(data), env={"BTT_EDGE_DICOM_PORT": port})
    assert result.returncode == 1  # no device identity
    assert "[FAIL] device keys" in result.stdout
    assert "fix: btt-edge provision" in result.stdout
    good = _doctor(
        "--data-dir", str(data), "--json", env={"BTT_EDGE_DICOM_PORT": port, "BTT_EDGE_RECEIPTS_DEV_MODE": "true"}
    )
    assert good.returncode == 0, good.stdout
    assert json.loads(good.stdout)["ok"] is True
    assert sorted(os.listdir(data)) == []  # nothing created


def test_doctor_reports_a_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text("[dicom]\nport = 99999\n")
    result = _doctor("--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "[FAIL] configuration" in result.stdout
    assert "dicom.port" in result.stdout

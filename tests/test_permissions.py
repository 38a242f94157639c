"""Patient data is private on disk whatever the umask: the data directory, the database (and its -wal/-shm), what
the agent finds too loose at start, and doctor's warning about it. The agent as a process: test_health_agent.py."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent import data_modes, protect_data_dir
from edge.config import AgentConfig, with_overrides
from edge.db import DB_FILENAME, connect
from edge.errors import ConfigError
from edge.ops.doctor import run_checks
from edge.ops.health import permissions_check
from runtime.durable import PRIVATE, DataModes, make_dirs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _config(data: Path, **sections: dict[str, object]) -> AgentConfig:
    return with_overrides(AgentConfig(), agent={"data_dir": str(data)}, **sections)


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_modes_private_or_for_the_group() -> None:
    assert DataModes.for_group(False) == PRIVATE
    assert PRIVATE.umask == 0o077
    assert DataModes.for_group(False, group_search=True).root == 0o710
    group = DataModes.for_group(True)
    assert (group.directory, group.file, group.root, group.umask) == (0o750, 0o640, 0o750, 0o027)
    # the default configuration: the control socket in the data directory is open to the group, nothing else is
    assert data_modes(AgentConfig()) == DataModes(0o700, 0o600, 0o710)
    assert data_modes(with_overrides(AgentConfig(), control={"group_access": False})).root == 0o700
    assert data_modes(with_overrides(AgentConfig(), control={"socket_path": "/run/btt/control.sock"})).root == 0o700
    assert data_modes(with_overrides(AgentConfig(), agent={"group_access": True})).file == 0o640


def test_make_dirs_and_the_database_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "a" / "data"
    make_dirs(data, 0o710)
    assert _mode(tmp_path / "a") == _mode(data) == 0o710  # exactly, even where the umask would take g+x off
    conn = connect(data / "sub" / DB_FILENAME)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    names = sorted(p.name for p in (data / "sub").iterdir())
    assert names == ["edge.db", "edge.db-shm", "edge.db-wal"]
    assert {p.name: _mode(p) for p in (data / "sub").iterdir()} == dict.fromkeys(names, 0o600)
    assert _mode(data / "sub") == 0o700
    conn.close()


def test_a_loose_data_dir_is_tightened_at_start_and_doctor_warns_first(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "data"
    (data / "dicom" / "1.2.3").mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    (data / "dicom").chmod(0o755)
    conn = connect(data / DB_FILENAME)
    conn.close()
    (data / DB_FILENAME).chmod(0o644)
    (data / "keys").mkdir(mode=0o700)
    (data / "keys" / "device.key").write_bytes(b"k")
    (data / "keys" / "device.key").chmod(0o644)
    (data / "notes.txt").write_text("x")
    (data / "notes.txt").chmod(0o666)
    (data / "link").symlink_to(tmp_path)
    with socket.socket(socket.AF_UNIX) as sock:  # a socket keeps its owner's mode (the control server's 0660)
        sock.bind(str(data / "control.sock"))
        (data / "control.sock").chmod(0o660)
        config = _config(data)

        quick = with_overrides(config, pipeline={"enabled": False})  # doctor without loading the model
        warned = {c.name: c for c in run_checks(quick, "test")}["permissions"]
        assert warned.status == "warn"
        for expected in (". 0755 (at most 0710)", "edge.db 0644 (at most 0600)", "dicom 0755 (at most 0700)"):
            assert expected in warned.detail
        assert "keys/device.key 0644 (at most 0600)" in warned.detail
        assert f"chmod -R go-rwx {data} && sudo chmod g+x {data}" in warned.fix

        changed = protect_data_dir(config)
        assert {p.name for p in changed} == {"data", "edge.db", "dicom", "notes.txt", "device.key"}
        assert _mode(data) == 0o710
        assert _mode(data / DB_FILENAME) == 0o600
        assert _mode(data / "dicom") == 0o700
        assert _mode(data / "dicom" / "1.2.3") == 0o755  # out of reach through dicom/ (0700); not walked
        assert _mode(data / "notes.txt") == 0o600
        assert _mode(data / "keys" / "device.key") == 0o600
        assert _mode(data / "control.sock") == 0o660
        assert protect_data_dir(config) == []
        ok = permissions_check(data, data_modes(config))
        assert ok.status == "ok", ok.detail


def test_group_access_allows_the_group_in_but_no_one_else(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = with_overrides(AgentConfig(), agent={"data_dir": str(data), "group_access": True})
    protect_data_dir(config)
    assert _mode(data) == 0o750
    (data / "dicom").mkdir(mode=0o750)
    (data / "report.txt").write_text("x")
    (data / "report.txt").chmod(0o664)
    check = permissions_check(data, data_modes(config))
    assert check.status == "warn"
    assert "report.txt 0664 (at most 0640)" in check.detail
    assert "dicom" not in check.detail
    assert f"chmod -R g-w,o-rwx {data}" in check.fix
    protect_data_dir(config)
    assert _mode(data / "report.txt") == 0o640


def test_a_data_dir_the_agent_cannot_make_private_stops_it_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another user owns it (faked: this suite may run as root, whom chmod never refuses)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "stray.txt").write_text("x")

    def refuse(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    def refuse_entries(path: Path, mode: int) -> bool:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr("edge.agent.os.chmod", refuse)
    with pytest.raises(ConfigError, match=r"agent.data_dir: cannot make .* private \(Operation not permitted\)"):
        protect_data_dir(_config(data))
    monkeypatch.undo()
    monkeypatch.setattr("edge.agent.tighten", refuse_entries)
    protect_data_dir(_config(data))  # the directory itself is private now: a stray entry is only a warning
    assert _mode(data) == 0o710
    assert any("left too open" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

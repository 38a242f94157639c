"""Model updates through the control socket, as the terminal UI's Models screen does them: check, apply and roll
back against a real signed repository served over loopback HTTP, each action in the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.agent import updater_for
from edge.control import AgentState, ControlClient, ControlServer
from edge.db import DB_FILENAME, connect
from edge.errors import ControlError
from tests.ota_helpers import agent_config, bundle_dir, new_repository, publish_bundle, serve

pytestmark = pytest.mark.integration


def test_check_apply_rollback_through_the_socket(tmp_path: Path) -> None:
    repo = new_repository(tmp_path)
    publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.1.0"))
    factory = bundle_dir(tmp_path / "bundles", "1.0.0")
    with serve(repo.directory) as server:
        config = agent_config(tmp_path / "data", factory, server.url, repo.directory / "metadata" / "1.root.json")
        connect(config.agent.data_dir / DB_FILENAME).close()
        updater = updater_for(config)
        control = ControlServer(config.control, AgentState(config, updater=updater), updater=updater)
        control.start()
        try:
            with ControlClient(control.path) as client:
                with pytest.raises(ControlError, match="no previous model"):
                    client.call("ota.rollback")
                check = client.call("ota.check")
                assert check["verdict"] == "newer"
                assert check["offer"]["version"] == "1.1.0"
                assert client.call("models")["last_check"]["verdict"] == "newer"
                applied = client.call("ota.apply", timeout_s=300)
                assert applied["outcome"] == "staged"  # the pipeline switches at its next idle moment
                assert applied["version"] == "1.1.0"
                assert client.call("models")["ota"]["staged"] is not None
                entries = client.call("audit")
        finally:
            control.stop()
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("ota.apply", "ok"),
        ("ota.check", "ok"),
        ("ota.rollback", "refused"),
    ]
    assert "no previous model" in entries[2]["detail"]

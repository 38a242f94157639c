"""``btt-relay`` admin commands and configuration checks; ``btt-relay run`` serving the API over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cloud_relay.cli import main
from cloud_relay.config import HttpConfig, IngestConfig, MqttConfig
from cloud_relay.errors import RelayConfigError
from protocol.keyfiles import save_public_key
from protocol.keys import generate_key
from tests.conftest import free_port
from tests.receipts_helpers import make_box

BTT_RELAY = Path(sys.executable).with_name("btt-relay")


def test_mqtt_url_and_bounds() -> None:
    c = MqttConfig.from_url("mqtts://btt-relay:s%40cret@broker.example:8884", client_id="w2")
    assert (c.host, c.port, c.username, c.password, c.tls, c.client_id) == (
        "broker.example", 8884, "btt-relay", "s@cret", True, "w2",
    )  # fmt: skip
    assert MqttConfig.from_url("mqtt://h").port == 1883
    with pytest.raises(RelayConfigError, match="mqtt://"):
        MqttConfig.from_url("http://h")
    with pytest.raises(RelayConfigError, match="client_id"):
        MqttConfig.from_url("mqtt://h", client_id="a/b")
    with pytest.raises(RelayConfigError, match="batch_max"):
        IngestConfig(batch_max=0)
    with pytest.raises(RelayConfigError, match="port"):
        HttpConfig(port=70000)


def test_admin_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manufacturer = generate_key()
    box = make_box(tmp_path / "box", manufacturer)
    save_public_key(tmp_path / "m.pub", manufacturer.public)
    cert = tmp_path / "cert.json"
    cert.write_text(json.dumps(box.identity.certificate), encoding="utf-8")
    db = str(tmp_path / "relay.db")
    device = box.identity.device_id
    assert main(["trust", "add", "manufacturer", str(tmp_path / "m.pub"), "--db", db]) == 0
    assert main(["clinic", "add", "clinic-a", "--name", "Clinic A", "--db", db]) == 0
    assert main(["device", "add", device, "--clinic", "clinic-a", "--certificate", str(cert), "--db", db]) == 0
    assert main(["device", "add", device, "--asset", "asset-9", "--db", db]) == 0  # keeps its clinic
    capsys.readouterr()
    assert main(["token", "add", "clinic-a", "--db", db]) == 0
    assert capsys.readouterr().out.startswith("btt_")
    assert main(["device", "list", "--db", db]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["clinic"], listed["asset"]) == (device, "clinic-a", "asset-9")
    assert listed["keyids"] == [box.identity.key.keyid]
    assert main(["device", "revoke", device, "--reason", "stolen", "--db", db]) == 0
    assert main(["tariff", "set", "exposure", "CNY", "200", "--db", db]) == 0
    capsys.readouterr()
    assert main(["ledger", "export", "--period", "2026-11", "--format", "json", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out) == {"period": "2026-11", "receipts": 0, "clinics": [], "owners": []}
    out = tmp_path / "ledger.csv"
    assert main(["ledger", "export", "--period", "2026-11", "--out", str(out), "--db", db]) == 0
    assert out.read_text().startswith("period,role,party,currency")
    # bad input: one line on stderr, exit 2
    assert main(["token", "add", "no-such-clinic", "--db", db]) == 2
    assert main(["device", "revoke", "nope", "--reason", "x", "--db", db]) == 2
    assert main(["ledger", "export", "--period", "2026-13", "--db", db]) == 2
    assert main(["device", "add", "x", "--certificate", str(tmp_path / "missing.json"), "--db", db]) == 2
    assert main(["rejects", "--db", db]) == 0
    err = capsys.readouterr().err
    assert "unknown clinic" in err
    assert "YYYY-MM" in err


def test_run_serves_the_api(tmp_path: Path) -> None:
    db = str(tmp_path / "relay.db")
    assert main(["clinic", "add", "clinic-a", "--name", "A", "--db", db]) == 0
    port = free_port()
    proc = subprocess.Popen(
        [str(BTT_RELAY), "run", "--db", db, "--http-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=2) as response:
                    assert json.load(response)["info"]["title"].startswith("BTT Edge cloud relay")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/devices", timeout=2)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        if proc.stderr is not None:
            proc.stderr.close()

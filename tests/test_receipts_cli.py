"""``btt-edge provision`` and ``btt-edge receipts``: what technicians, auditors and the acceptance checks use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.db import DB_FILENAME, connect
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import KeyFiles, load_identity
from protocol.receipts import Use
from tests.receipts_helpers import make_grant


def _record(data: Path, n: int) -> None:
    conn = connect(data / DB_FILENAME)
    book = ReceiptBook(load_identity(KeyFiles(data / "keys")))
    book.migrate(conn)
    book.record_batch(conn, [Use(kind="analysis", study_uid=f"1.2.{i}") for i in range(n)])
    conn.close()


def test_provision_dev_export_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    out = capsys.readouterr()
    assert "DEVELOPMENT MANUFACTURER KEY" in out.err
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    assert "already provisioned" in capsys.readouterr().out
    _record(data, 7)
    assert main(["receipts", "settle", "--data-dir", str(data)]) == 0
    _record(data, 2)
    assert main(["receipts", "list", "--data-dir", str(data), "--limit", "3"]) == 0
    listing = capsys.readouterr().out
    assert "analysis" in listing
    assert listing.strip().endswith("no")

    export, trust = tmp_path / "export.json", data / "keys" / "dev-manufacturer.pub"
    assert main(["receipts", "export", "--data-dir", str(data), "--out", str(export)]) == 0
    capsys.readouterr()
    assert main(["receipts", "verify", str(export), "--trust", str(trust)]) == 0
    assert "9 receipts, 1 settlements, 2 unsettled" in capsys.readouterr().out

    doc = json.loads(export.read_text())
    doc["receipts"][3]["signed"]["units"] = 2
    export.write_text(json.dumps(doc))
    assert main(["receipts", "verify", str(export), "--trust", str(trust)]) == 1
    assert capsys.readouterr().out.startswith("FAIL BadSignature: receipt")


def test_verify_names_wrong_manufacturer_and_revocation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    other = tmp_path / "other.key"
    assert main(["provision", "--new-manufacturer-key", str(other)]) == 0
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    _record(data, 2)
    export = tmp_path / "export.json"
    assert main(["receipts", "export", "--data-dir", str(data), "--out", str(export)]) == 0
    capsys.readouterr()
    assert main(["receipts", "verify", str(export), "--trust", f"{other}.pub"]) == 1
    assert capsys.readouterr().out.startswith("FAIL UntrustedIssuer")

    identity = load_identity(KeyFiles(data / "keys"))
    assert identity is not None
    keyid = identity.key.keyid
    revoked = tmp_path / "revoked.json"
    dev_key = data / "keys" / "dev-manufacturer.key"
    assert main(["provision", "--revoke", keyid, "--manufacturer-key", str(dev_key), "--out", str(revoked)]) == 0
    trust = data / "keys" / "dev-manufacturer.pub"
    assert main(["receipts", "verify", str(export), "--trust", str(trust), "--revocations", str(revoked)]) == 1
    assert "FAIL RevokedKey" in capsys.readouterr().out
    assert main(["receipts", "verify", str(export), "--trust", str(dev_key)]) == 2  # a private key is not trust


def test_manufacturer_signs_a_request_from_the_box(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, mkey = tmp_path / "data", tmp_path / "m.key"
    assert main(["provision", "--new-manufacturer-key", str(mkey)]) == 0
    assert main(["provision", "--data-dir", str(data), "--device-id", "unit-0042"]) == 0
    assert load_identity(KeyFiles(data / "keys")) is None
    cert = tmp_path / "cert.json"
    request = data / "keys" / "device.request.json"
    args = ["provision", "--sign-request", str(request), "--manufacturer-key", str(mkey), "--out", str(cert)]
    assert main(args) == 0
    assert (
        main(["provision", "--data-dir", str(data), "--install-certificate", str(cert), "--trust", f"{mkey}.pub"]) == 0
    )
    identity = load_identity(KeyFiles(data / "keys"))
    assert identity is not None
    assert identity.device_id == "unit-0042"
    assert (data / "keys" / "device.key").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()


def test_grant_install_and_balances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protocol.keyfiles import save_public_key
    from protocol.keys import generate_key

    data = tmp_path / "data"
    assert main(["provision", "--data-dir", str(data), "--dev", "--device-id", "asset-1"]) == 0
    _record(data, 1)
    issuer = generate_key()
    save_public_key(tmp_path / "issuer.pub", issuer.public)
    grant = tmp_path / "grant.json"
    grant.write_text(json.dumps(make_grant(issuer)))
    config = tmp_path / "edge.toml"
    config.write_text(f'[receipts]\nissuer_keys = ["{tmp_path / "issuer.pub"}"]\n')
    assert main(["receipts", "grant", str(grant), "--config", str(config), "--data-dir", str(data)]) == 0
    assert main(["receipts", "balances", "--data-dir", str(data)]) == 0
    assert "grant-1" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[receipts]\nissuer_keys = []\n")
    assert main(["receipts", "grant", str(grant), "--config", str(bad), "--data-dir", str(data)]) == 2


@pytest.mark.slow
def test_first_run_provisions_when_a_manufacturer_key_is_configured(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from protocol.keyfiles import save_private_key
    from protocol.keys import generate_key

    save_private_key(tmp_path / "m.key", generate_key())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "data"
    env = {
        **os.environ,
        "BTT_EDGE_CONFIG": "",
        "BTT_EDGE_RECEIPTS_MANUFACTURER_KEY": str(tmp_path / "m.key"),
        # only what this test is about: no model loading, no result forwarding, no control socket
        "BTT_EDGE_PIPELINE_ENABLED": "false",
        "BTT_EDGE_RESULTS_ENABLED": "false",
        "BTT_EDGE_CONTROL_ENABLED": "false",
    }
    argv = [sys.executable, "-m", "edge", "run", "--data-dir", str(data), "--port", str(port)]
    log = tmp_path / "agent.log"
    # stderr to a file, not a pipe: nothing here can block on the agent, whatever it does
    with log.open("w") as err:
        agent = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while "agent ready" not in log.read_text():  # signal handlers are installed by then
            assert agent.poll() is None, "the agent exited:\n" + log.read_text()
            assert time.monotonic() < deadline, "the agent did not get ready within 120 s:\n" + log.read_text()
            time.sleep(0.1)
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.send_signal(signal.SIGUSR1)  # the agent writes every thread's stack to stderr
            time.sleep(1)
            pytest.fail("the agent did not stop within 60 s of SIGTERM:\n" + log.read_text())
        assert code == 0, log.read_text()
    finally:
        agent.kill()
        agent.wait()
    text = log.read_text()
    assert "device identity provisioned" in text
    assert load_identity(KeyFiles(data / "keys")) is not None


def test_rotate_then_export_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    _record(data, 2)
    assert main(["provision", "--data-dir", str(data), "--rotate"]) == 2  # needs the manufacturer
    assert main(["provision", "--data-dir", str(data), "--rotate", "--dev"]) == 0
    _record(data, 2)
    export = tmp_path / "export.json"
    assert main(["receipts", "export", "--data-dir", str(data), "--out", str(export)]) == 0
    assert len(json.loads(export.read_text())["certificates"]) == 2
    capsys.readouterr()
    assert main(["receipts", "verify", str(export), "--trust", str(data / "keys" / "dev-manufacturer.pub")]) == 0
    assert "4 receipts" in capsys.readouterr().out


def test_inclusion_proof_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    _record(data, 7)
    proof = tmp_path / "proof.json"
    assert main(["receipts", "prove", "3", "--data-dir", str(data), "--out", str(proof)]) == 2  # not settled yet
    assert main(["receipts", "settle", "--data-dir", str(data)]) == 0
    trust = str(data / "keys" / "dev-manufacturer.pub")
    for seq in (1, 5, 7):
        assert main(["receipts", "prove", str(seq), "--data-dir", str(data), "--out", str(proof)]) == 0
        capsys.readouterr()
        assert main(["receipts", "verify-proof", str(proof), "--trust", trust]) == 0
        assert f"receipt {seq} of" in capsys.readouterr().out
    doc = json.loads(proof.read_text())
    doc["proof"][0] = "00" * 32
    proof.write_text(json.dumps(doc))
    assert main(["receipts", "verify-proof", str(proof), "--trust", trust]) == 1
    assert capsys.readouterr().out.startswith("FAIL InclusionProofInvalid")


def test_clear_errors_without_a_database_or_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["receipts", "list", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no agent database" in capsys.readouterr().err
    connect(tmp_path / DB_FILENAME).close()
    assert main(["receipts", "list", "--data-dir", str(tmp_path)]) == 2
    assert "no receipts yet" in capsys.readouterr().err
    assert main(["receipts", "verify", str(tmp_path / "missing.json"), "--trust", str(tmp_path / "none.pub")]) == 2

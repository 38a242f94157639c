"""``btt-edge outbox status|requeue``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import OutboxConfig
from edge.db import DB_FILENAME, connect
from edge.outbox import Outbox, Rejection


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    conn = connect(tmp_path / DB_FILENAME)
    Outbox.migrate(conn)
    outbox = Outbox(OutboxConfig())
    for n in range(3):
        outbox.enqueue(conn, "receipts", {"n": n}, item=f"receipt:{n}")
    outbox.enqueue(conn, "health", {"ok": True}, item="health:1")
    outbox.settle(conn, ["receipt:0"], [Rejection("receipt:1", "UnknownSigningKey: no certificate", permanent=True)])
    conn.close()
    return tmp_path


def test_status(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "status", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "pending: health 1, receipts 1" in out
    assert "receipt:1  receipts  UnknownSigningKey: no certificate" in out
    assert main(["outbox", "status", "--data-dir", str(data_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pending"] == {"receipts": 1, "health": 1}
    assert doc["rejected_items"] == [
        {"id": "receipt:1", "kind": "receipts", "reason": "UnknownSigningKey: no certificate"}
    ]


def test_requeue(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "requeue", "--data-dir", str(data_dir), "receipt:0"]) == 1  # done, not rejected
    assert main(["outbox", "requeue", "--data-dir", str(data_dir), "receipt:1"]) == 0
    assert "requeued 1 item(s)" in capsys.readouterr().out
    conn = connect(data_dir / DB_FILENAME)
    assert Outbox.state(conn, "receipt:1") == "pending"
    conn.close()
    assert main(["outbox", "requeue", "--data-dir", str(data_dir), "--all"]) == 0
    assert main(["outbox", "requeue", "--data-dir", str(data_dir)]) == 2  # neither ids nor --all


def test_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outbox", "status", "--data-dir", str(tmp_path / "nothing")]) == 2
    assert "no agent database" in capsys.readouterr().err

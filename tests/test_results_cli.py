"""``btt-edge results list|resend`` over a real agent database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.db import transaction
from edge.results import queue
from edge.results.queue import ResultObject
from edge.store.image_store import ImageStore


def _queue_one(data_dir: Path) -> None:
    store = ImageStore(data_dir, min_free_mb=0, duplicate_policy="keep")
    store.start()
    conn = store.conn
    queue.migrate_results(conn)
    obj = ResultObject("1.2.3.9", "1.2.3.1", "1.2.3", "sr", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.1.2.1",
                       "results/1.2.3/1.2.3.9.dcm", 10, "ab")  # fmt: skip
    with transaction(conn):
        queue.enqueue(conn, obj, ["PACS@h:104", "ARCH@h:105"], 0.0)
    with transaction(conn):
        queue.record_failure(conn, obj.object_uid, "PACS@h:104", "cannot connect", now=0.0, backoff_initial_s=1,
                             backoff_max_s=1, max_attempts=1)  # fmt: skip
        queue.record_rejected(conn, obj.object_uid, "ARCH@h:105", 0xA900, "status 0xA900: SOP class mismatch")
        queue.mark_source(conn, "1.2.3.7", "failed", "no analysis is recorded for 1.2.3.7")
    store.stop()


def test_list_json_and_resend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _queue_one(tmp_path)
    assert main(["results", "list", "--data-dir", str(tmp_path), "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert (doc["object_uid"], doc["kind"], doc["source_sop_uid"]) == ("1.2.3.9", "sr", "1.2.3.1")
    states = {d["destination"]: (d["state"], d["last_status"], d["last_error"]) for d in doc["deliveries"]}
    assert states == {
        "PACS@h:104": ("dead", None, "cannot connect"),
        "ARCH@h:105": ("rejected", "0xA900", "status 0xA900: SOP class mismatch"),
    }
    assert main(["results", "resend", "--data-dir", str(tmp_path), "--destination", "PACS@h:104"]) == 0
    assert "1 deliveries queued again" in capsys.readouterr().out
    assert main(["results", "list", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "PACS@h:104" in text
    assert "pending" in text
    assert "rejected" in text


def test_list_without_database_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "list", "--data-dir", str(tmp_path / "none")]) == 2
    assert "no agent database" in capsys.readouterr().err


def test_list_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _queue_one(tmp_path)
    assert main(["results", "list", "--data-dir", str(tmp_path), "--failed", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert (doc["sop_instance_uid"], doc["reason"]) == ("1.2.3.7", "no analysis is recorded for 1.2.3.7")
    assert main(["results", "list", "--data-dir", str(tmp_path), "--failed"]) == 0
    assert "1.2.3.7  no analysis is recorded" in capsys.readouterr().out

"""Acknowledged receipts survive kill -9: a child records uses and reports each commit, then is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.db import DB_FILENAME, connect
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import KeyFiles, load_identity
from protocol.verify import Trust, verify_export
from tests.receipts_helpers import make_box

_CHILD = """
import sys
from pathlib import Path
from edge.db import DB_FILENAME, connect, transaction
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import KeyFiles, load_identity
from protocol.receipts import Use

data, mode = Path(sys.argv[1]), sys.argv[2]
conn = connect(data / DB_FILENAME)
book = ReceiptBook(load_identity(KeyFiles(data / "keys")))
i = 0
while True:
    i += 1
    if mode == "hook":
        with transaction(conn):
            conn.execute("INSERT INTO work (id) VALUES (?)", (i,))
            seq = book.record(conn, Use(kind="exposure", study_uid=f"1.2.{i}")).seq
    else:
        seq = book.record_batch(conn, [Use(kind="analysis")] * 25)[-1].seq
    print(seq, flush=True)
"""


@pytest.mark.parametrize("mode", ["hook", "batch"])
def test_acknowledged_receipts_survive_kill_9(tmp_path: Path, mode: str) -> None:
    box = make_box(tmp_path)
    box.conn.execute("CREATE TABLE work (id INTEGER PRIMARY KEY)")
    box.conn.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-c", _CHILD, str(tmp_path), mode]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) as child:
        assert child.stdout is not None
        acked = [int(child.stdout.readline()) for _ in range(40)]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        acked += [int(line) for line in child.stdout.read().split()]

    conn = connect(tmp_path / DB_FILENAME)
    book = ReceiptBook(load_identity(KeyFiles(tmp_path / "keys")))
    last = conn.execute("SELECT max(seq) FROM receipts").fetchone()[0]
    assert last >= acked[-1]
    if mode == "hook":  # the receipt and the state change committed together, or neither did
        assert conn.execute("SELECT count(*) FROM work").fetchone()[0] == last
    book.close_batch(conn, 10_000)
    result = verify_export(book.export(conn), Trust.of([box.manufacturer.public]))
    assert result.checkpoint.seq == last
    assert result.unsettled == 0
    conn.close()

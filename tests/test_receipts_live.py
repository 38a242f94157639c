"""An identity that arrives while the agent runs: ``btt-edge provision`` (or ``--rotate``) takes effect without a
restart (:class:`edge.receipts.service.IdentityWatch`), the parked uses are signed, and sync starts sending."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import AgentConfig, with_overrides
from edge.db import DB_FILENAME, connect, transaction
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import KeyFiles, dev_manufacturer_key, rotate
from edge.receipts.service import SettlementService, open_book
from protocol.keyfiles import load_public_key
from protocol.receipts import Use
from protocol.verify import Trust, verify_export
from tests.conftest import StartAgent, wait_until
from tests.mqtt_broker import RELAY_USER, MosquittoBroker, StubRelay


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def config(data: Path) -> AgentConfig:
    return with_overrides(AgentConfig(), agent={"data_dir": str(data)})


@pytest.fixture
def conn(data: Path) -> Iterator[sqlite3.Connection]:
    data.mkdir(parents=True, exist_ok=True)
    connection = connect(data / DB_FILENAME)
    yield connection
    connection.close()


def _record(conn: sqlite3.Connection, book: ReceiptBook, n: int) -> None:
    for i in range(n):
        with transaction(conn):
            book.record(conn, Use(kind="exposure", study_uid=f"1.2.3.{i}"))


def _verified(conn: sqlite3.Connection, book: ReceiptBook, data: Path) -> list[str]:
    """The export verifies against the development manufacturer key; the key id of each receipt."""
    doc = book.export(conn)
    verify_export(doc, Trust.of([load_public_key(data / "keys" / "dev-manufacturer.pub")]))
    return [r["signed"]["keyid"] for r in doc["receipts"]]


def _pending(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM receipt_pending").fetchone()[0])


def _identified(book: ReceiptBook) -> bool:
    """Whether the book has an identity (asked afresh each time: provisioning gives it one behind mypy's back)."""
    return book.identity is not None


def test_provisioned_while_running_signs_the_parked_uses(
    config: AgentConfig, conn: sqlite3.Connection, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = open_book(config.receipts, config.agent.data_dir)
    service = SettlementService(config.receipts, config.agent.data_dir, book)
    _record(conn, book, 3)
    assert not _identified(book)
    assert _pending(conn) == 3
    assert service.check_identity() is False  # nothing on disk yet

    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    assert "a running agent takes it within 5 s" in capsys.readouterr().out
    assert service.check_identity() is True
    assert _identified(book)
    assert _pending(conn) == 0
    _record(conn, book, 2)  # signed straight away now
    assert len(_verified(conn, book, data)) == 5
    assert service.check_identity() is False  # the same identity again: nothing to do


def test_a_key_rotated_while_running_signs_from_the_next_check(
    config: AgentConfig, conn: sqlite3.Connection, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    book = open_book(config.receipts, config.agent.data_dir)
    service = SettlementService(config.receipts, config.agent.data_dir, book)
    assert service.check_identity() is False  # the identity it opened with
    _record(conn, book, 2)
    assert main(["provision", "--data-dir", str(data), "--rotate", "--dev"]) == 0
    assert "a running agent signs with the new key within 5 s" in capsys.readouterr().out
    assert service.check_identity() is True
    _record(conn, book, 2)
    keys = _verified(conn, book, data)  # the export carries both certificates
    assert len(set(keys[:2])) == 1
    assert len(set(keys[2:])) == 1
    assert keys[0] != keys[2]


def test_a_rotation_whose_process_died_half_way_is_finished_a_check_later(
    config: AgentConfig, conn: sqlite3.Connection, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.receipts import identity as identity_module

    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    book = open_book(config.receipts, config.agent.data_dir)
    service = SettlementService(config.receipts, config.agent.data_dir, book)
    files = KeyFiles(data / "keys")
    with monkeypatch.context() as patch:  # the rotating process dies before it moves the staged files
        patch.setattr(identity_module, "_finish_rotation", lambda files: None)
        rotate(files, dev_manufacturer_key(files))
    assert files.next_certificate.exists()
    assert service.check_identity() is False  # a rotation being written: wait
    assert service.check_identity() is True  # still staged a check later: finished here
    assert not files.next_certificate.exists()
    assert not files.next_key.exists()
    _record(conn, book, 1)
    assert len(_verified(conn, book, data)) == 1


def test_an_unusable_new_certificate_is_logged_once_and_the_book_keeps_its_identity(
    config: AgentConfig, conn: sqlite3.Connection, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    book = open_book(config.receipts, config.agent.data_dir)
    before = book.identity
    service = SettlementService(config.receipts, config.agent.data_dir, book)
    cert = data / "keys" / "device.cert.json"
    doc = json.loads(cert.read_text())
    doc["signed"]["keyid"] = "0" * 64
    cert.write_text(json.dumps(doc))
    with caplog.at_level(logging.ERROR, logger="edge.receipts"):
        assert service.check_identity() is False
        assert service.check_identity() is False
    unusable = [r for r in caplog.records if "device identity on disk unusable" in r.getMessage()]
    assert len(unusable) == 1
    assert book.identity is before
    _record(conn, book, 1)
    assert _pending(conn) == 0  # still signing with the identity it had


def test_a_use_parked_by_a_writer_that_raced_the_switch_is_signed_at_the_next_check(
    config: AgentConfig, conn: sqlite3.Connection, data: Path
) -> None:
    assert main(["provision", "--data-dir", str(data), "--dev"]) == 0
    book = open_book(config.receipts, config.agent.data_dir)
    service = SettlementService(config.receipts, config.agent.data_dir, book)
    _record(conn, ReceiptBook(None), 2)  # a writer that still saw no identity
    assert _pending(conn) == 2
    service.check_identity()
    assert _pending(conn) == 0
    assert len(_verified(conn, book, data)) == 2


@pytest.mark.integration
@pytest.mark.slow
def test_agent_provisioned_while_running_syncs_the_parked_receipts(
    start_agent: StartAgent, tmp_path: Path, data: Path
) -> None:
    device = "unit-live"
    broker = MosquittoBroker(tmp_path / "broker", users={device: "device-pw", RELAY_USER: "relay-pw"})
    password = tmp_path / "device.password"
    password.write_text("device-pw\n")
    with broker:
        relay = StubRelay(broker, "relay-pw")
        try:
            env = {
                "BTT_EDGE_PIPELINE_ENABLED": "false",
                "BTT_EDGE_RECEIPTS_CHECK_INTERVAL_S": "0.2",
                "BTT_EDGE_OUTBOX_FEED_INTERVAL_S": "0.1",
                "BTT_EDGE_SYNC_BACKOFF_INITIAL_S": "0.1",
                "BTT_EDGE_SYNC_PASSWORD_FILE": str(password),
            }
            agent = start_agent(data, args=["--mqtt", broker.url()], env=env)
            conn = connect(data / DB_FILENAME)  # the agent has created the tables
            try:
                _record(conn, ReceiptBook(None), 3)  # parked: the box has no identity
            finally:
                conn.close()
            assert main(["provision", "--data-dir", str(data), "--dev", "--device-id", device]) == 0
            wait_until(lambda: len(relay.ids("receipt:")) == 3, 30, f"the parked receipts at the relay\n{agent.log()}")
            assert relay.ids("certificate:")
            assert "device identity picked up" in agent.log()
            assert agent.terminate() == 0
        finally:
            relay.close()

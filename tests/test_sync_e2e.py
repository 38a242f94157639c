"""End to end: the agent's sync service and outbox, a real Mosquitto (shipped config and ACL), the real relay.

Each fault ends with the same check: every receipt is stored exactly once at the relay (one row per (device,
seq), each the device's own), and every outbox row is ``done`` on the device (``rejected`` for a revoked device,
with nothing of it stored). The relay runs as ``btt-relay run`` so it can be killed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_relay.ingest import Ingestor, UpMessage
from cloud_relay.registry import MANUFACTURER, Registry
from cloud_relay.storage import Database, open_database
from edge.config import AgentConfig, with_overrides
from edge.outbox import Outbox
from edge.sync import SyncService
from protocol.encoding import canonical_bytes, sha256_hex
from protocol.keys import generate_key, seal
from protocol.receipts import RECEIPT
from protocol.topics import up_topic
from tests.conftest import wait_until
from tests.mqtt_broker import RELAY_USER, MosquittoBroker
from tests.receipts_helpers import Box, make_box
from tests.sync_helpers import start_sync_agent

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RELAY_PW = "relay-secret"
DEVICE_PW = "device-secret"
BTT_RELAY = Path(sys.executable).with_name("btt-relay")


class Relay:
    """``btt-relay run`` on a SQLite database, restartable, killable."""

    def __init__(self, db_path: Path, broker: MosquittoBroker, log: Path) -> None:
        self.db_path = db_path
        self.broker = broker
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker and wait until it is subscribed (its log says ``connected``)."""
        before = self._connects()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BTT_RELAY), "run", "--db", str(self.db_path), "--mqtt", self.broker.url(RELAY_USER, RELAY_PW),
                 "--client-id", "relay-1", "--http-port", "0", "--batch-wait-ms", "5"],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        wait_until(lambda: self._connects() > before, 30, "the relay to connect")

    def _connects(self) -> int:
        return self.log.read_text(errors="replace").count(" connected ") if self.log.exists() else 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture
def relay_db(tmp_path: Path) -> Iterator[Database]:
    db = open_database(str(tmp_path / "relay.db"))
    yield db
    db.close()


def _device(tmp_path: Path, name: str, db: Database, manufacturer: Any) -> Box:
    box = make_box(tmp_path / name, manufacturer)
    Outbox.migrate(box.conn)
    registry = Registry(db)
    registry.add_trust_key(MANUFACTURER, manufacturer.public)
    registry.add_clinic("clinic-a", "Clinic A")
    registry.add_device(box.identity.device_id, clinic="clinic-a", certificate=box.identity.certificate)
    return box


@pytest.fixture
def manufacturer() -> Any:
    return generate_key()


@pytest.fixture
def box(tmp_path: Path, relay_db: Database, manufacturer: Any) -> Box:
    return _device(tmp_path, "box", relay_db, manufacturer)


@pytest.fixture
def other(tmp_path: Path, relay_db: Database, manufacturer: Any) -> Box:
    return _device(tmp_path, "other", relay_db, manufacturer)


@pytest.fixture
def broker(tmp_path: Path, box: Box, other: Box) -> Iterator[MosquittoBroker]:
    users = {box.identity.device_id: DEVICE_PW, other.identity.device_id: DEVICE_PW, RELAY_USER: RELAY_PW}
    broker = MosquittoBroker(tmp_path / "broker", users=users)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def relay(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Relay]:
    relay = Relay(tmp_path / "relay.db", broker, tmp_path / "relay.log")
    relay.start()
    yield relay
    relay.stop()


def _config(box: Box, url: str, **sync: Any) -> AgentConfig:
    return with_overrides(
        AgentConfig(),
        agent={"data_dir": str(box.data_dir)},
        sync={"url": url, "backoff_initial_s": 0.1, "backoff_max_s": 0.5, "ack_timeout_s": 3.0, **sync},
        outbox={"feed_interval_s": 0.1},
    )


def _stored(db: Database, device: str) -> list[int]:
    with db.transaction() as tx:
        return [int(r[0]) for r in tx.all("SELECT seq FROM receipts WHERE device = ? ORDER BY seq", (device,))]


def _outbox(box: Box, state: str = "done", kind: str = "receipts") -> int:
    row = box.conn.execute("SELECT count(*) FROM outbox WHERE kind = ? AND state = ?", (kind, state)).fetchone()
    return int(row[0])


def _all_done(box: Box) -> bool:
    return not box.conn.execute("SELECT 1 FROM outbox WHERE state != 'done' LIMIT 1").fetchone()


def _exactly_once(db: Database, box: Box, n: int) -> None:
    """Every one of the box's ``n`` receipts stored once at the relay (the same hash) and done on the device."""
    device = box.identity.device_id
    assert _stored(db, device) == list(range(1, n + 1))
    with db.transaction() as tx:
        hashes = {seq: digest for seq, digest in tx.all("SELECT seq, hash FROM receipts WHERE device = ?", (device,))}
    assert hashes == {e["signed"]["seq"]: sha256_hex(canonical_bytes(e["signed"])) for e in box.book.receipts(box.conn)}
    assert _outbox(box) == n


@contextlib.contextmanager
def _syncing(box: Box, broker: MosquittoBroker, **sync: Any) -> Iterator[SyncService]:
    """The box's sync service, started against ``broker`` (stopped on the way out)."""
    config = _config(box, broker.url(box.identity.device_id, DEVICE_PW), **sync)
    service = SyncService(
        config.sync, config.agent.data_dir, Outbox.open(config), box.book, feed_interval_s=config.outbox.feed_interval_s
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


def test_broker_stopped_for_a_while_and_restarted(
    broker: MosquittoBroker, relay: Relay, relay_db: Database, box: Box
) -> None:
    box.record(150)
    with _syncing(box, broker):
        wait_until(lambda: _outbox(box) == 150, 60, "first sync")
        broker.stop()
        box.record(150)
        box.book.close_batch(box.conn, 1000)
        time.sleep(2.0)
        broker.start()
        wait_until(lambda: _outbox(box) == 300 and _all_done(box), 90, "catch-up after the broker restart")
    _exactly_once(relay_db, box, 300)
    with relay_db.transaction() as tx:
        assert tx.all("SELECT batch, first_seq, last_seq FROM settlements") == [(1, 1, 300)]


def _agent(data_dir: Path, url: str) -> subprocess.Popen[bytes]:
    return start_sync_agent(data_dir, url, {k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")})


def test_agent_killed_mid_publish_and_restarted(
    broker: MosquittoBroker, relay: Relay, relay_db: Database, box: Box
) -> None:
    box.record(1000)
    url = broker.url(box.identity.device_id, DEVICE_PW)
    agent = _agent(box.data_dir, url)
    try:
        wait_until(lambda: len(_stored(relay_db, box.identity.device_id)) >= 100, 60, "first deliveries")
        agent.kill()
        agent.wait(10)
        assert 0 < _outbox(box) < 1000, "the kill must land mid-stream"
        agent = _agent(box.data_dir, url)
        wait_until(lambda: _outbox(box) == 1000 and _all_done(box), 120, "catch-up after the restart")
    finally:
        agent.terminate()
        agent.wait(30)
    _exactly_once(relay_db, box, 1000)


def test_relay_killed_between_storing_and_acking(
    broker: MosquittoBroker, relay: Relay, relay_db: Database, box: Box
) -> None:
    box.record(600)
    device = box.identity.device_id
    # deterministic window: the relay stored the first 100 receipts and died before any ack went out
    items = [
        {"id": f"receipt:{e['signed']['seq']}:{e['signatures'][0]['sig'][:16]}", "body": e}
        for e in box.book.receipts(box.conn, 0, 100)
    ]
    doc = {"v": 1, "device": device, "kind": "receipts", "items": items}
    Ingestor(relay_db).handle([UpMessage(up_topic(device, "receipts"), json.dumps(doc).encode())])
    assert len(_stored(relay_db, device)) == 100
    with _syncing(box, broker, batch_max_items=5, max_inflight=1):
        # and a real kill -9 of the running relay mid-stream
        wait_until(lambda: len(_stored(relay_db, device)) >= 200, 60, "the relay storing")
        relay.kill()
        stored_at_kill, done_at_kill = len(_stored(relay_db, device)), _outbox(box)
        assert stored_at_kill < 600, "the kill must land mid-stream"
        assert done_at_kill < 600
        time.sleep(1.0)
        relay.start()
        wait_until(lambda: _outbox(box) == 600 and _all_done(box), 120, "catch-up after the relay restart")
    _exactly_once(relay_db, box, 600)


def test_duplicate_delivery(broker: MosquittoBroker, relay: Relay, relay_db: Database, box: Box) -> None:
    box.record(50)
    device = box.identity.device_id
    replayer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-replay", protocol=mqtt.MQTTv5)
    replayer.username_pw_set(device, DEVICE_PW)
    replayer.connect("127.0.0.1", broker.port)
    replayer.loop_start()
    try:
        items = [
            {"id": f"receipt:{e['signed']['seq']}:{e['signatures'][0]['sig'][:16]}", "body": e}
            for e in box.book.receipts(box.conn)
        ]
        payload = json.dumps({"v": 1, "device": device, "kind": "receipts", "items": items})
        for _ in range(3):  # the same message delivered three times before the device itself sends it
            replayer.publish(up_topic(device, "receipts"), payload, qos=1).wait_for_publish(5)
        wait_until(lambda: len(_stored(relay_db, device)) == 50, 30, "the replayed receipts")
    finally:
        replayer.disconnect()
        replayer.loop_stop()
    with _syncing(box, broker):
        wait_until(lambda: _outbox(box) == 50 and _all_done(box), 60, "the device's own sync")
    _exactly_once(relay_db, box, 50)


def test_forged_message_is_rejected_and_recorded(
    broker: MosquittoBroker, relay: Relay, relay_db: Database, box: Box
) -> None:
    box.record(30)
    device = box.identity.device_id
    genuine = box.book.receipts(box.conn)
    altered = copy.deepcopy(genuine[0])
    altered["signed"]["units"] = 500
    foreign = seal(RECEIPT, {**genuine[1]["signed"], "keyid": "f" * 64}, generate_key())
    forger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-forger", protocol=mqtt.MQTTv5)
    forger.username_pw_set(device, DEVICE_PW)
    forger.connect("127.0.0.1", broker.port)
    forger.loop_start()
    try:
        doc = {
            "v": 1,
            "device": device,
            "kind": "receipts",
            "items": [{"id": "forged-1", "body": altered}, {"id": "forged-2", "body": foreign}],
        }
        forger.publish(up_topic(device, "receipts"), json.dumps(doc), qos=1).wait_for_publish(5)
        forger.publish(up_topic(device, "receipts"), b"\x00not json", qos=1).wait_for_publish(5)
    finally:
        forger.disconnect()
        forger.loop_stop()
    with _syncing(box, broker):
        wait_until(lambda: _outbox(box) == 30 and _all_done(box), 60, "the genuine receipts")
    _exactly_once(relay_db, box, 30)
    wait_until(lambda: len(_rejects(relay_db)) == 3, 10, "the rejects recorded")
    reasons = {item: reason for item, reason in _rejects(relay_db)}
    assert reasons["forged-1"].startswith("BadSignature")
    assert reasons["forged-2"].startswith(("UnknownSigningKey", "BadSignature"))
    assert reasons["*"].startswith("payload is not JSON")


def _rejects(db: Database) -> list[tuple[str, str]]:
    with db.transaction() as tx:
        return [(str(r[0]), str(r[1])) for r in tx.all("SELECT item_id, reason FROM rejects ORDER BY id")]


def test_revoked_device(broker: MosquittoBroker, relay: Relay, relay_db: Database, box: Box, other: Box) -> None:
    box.record(20)
    other.record(20)
    Registry(relay_db).revoke_device(other.identity.device_id, "reported stolen")
    with _syncing(box, broker), _syncing(other, broker):
        wait_until(lambda: _outbox(box) == 20 and _all_done(box), 60, "the genuine device")
        wait_until(lambda: _outbox(other, "rejected") == 20, 60, "the revoked device's receipts rejected")
    _exactly_once(relay_db, box, 20)
    assert _stored(relay_db, other.identity.device_id) == []
    reasons = other.conn.execute("SELECT DISTINCT reason FROM outbox WHERE kind = 'receipts'").fetchall()
    assert {r[0].split(":")[0] for r in reasons} == {"RevokedKey"}

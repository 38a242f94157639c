"""Relay workers against a real Mosquitto: shared subscription, application acks after the commit, two workers."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_relay.cli import run
from cloud_relay.config import IngestConfig, MqttConfig, RelayConfig
from cloud_relay.consumer import Consumer
from cloud_relay.errors import StorageUnavailable, WorkerFailed
from cloud_relay.ingest import Ack, Ingestor, UpMessage
from cloud_relay.storage import Database
from protocol.keys import generate_key
from tests.conftest import wait_until
from tests.mqtt_broker import RELAY_USER, MosquittoBroker
from tests.receipts_helpers import Box
from tests.relay_helpers import provisioned, receipt_items, throwaway_db

pytestmark = pytest.mark.integration

BROKER_TUNING = "max_inflight_messages 1000\nmax_queued_messages 100000"


class Device:
    """A device's MQTT side as the contract has it: publish up messages, collect application acks."""

    def __init__(self, broker: MosquittoBroker, device: str, password: str) -> None:
        self.device = device
        self.acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(device, password)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.acks.put(json.loads(m.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(f"btt/v1/dev/{device}/ack", qos=1)
        assert subscribed.wait(5)

    def publish(self, kind: str, items: list[tuple[str, Any]]) -> None:
        doc = {"v": 1, "device": self.device, "kind": kind, "items": [{"id": i, "body": b} for i, b in items]}
        self.client.publish(f"btt/v1/dev/{self.device}/up/{kind}", json.dumps(doc), qos=1).wait_for_publish(5)

    def acked(self, n_ids: int, timeout: float = 20) -> tuple[list[str], list[dict[str, Any]]]:
        stored: list[str] = []
        rejected: list[dict[str, Any]] = []
        while len(stored) + len(rejected) < n_ids:
            ack = self.acks.get(timeout=timeout)
            stored += ack["stored"]
            rejected += ack["rejected"]
        return stored, rejected

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with throwaway_db("sqlite", tmp_path) as database:
        yield database


@pytest.fixture
def box(db: Database, tmp_path: Path) -> Box:
    return provisioned(db, tmp_path / "box", generate_key())


@pytest.fixture
def broker(tmp_path: Path, box: Box) -> Iterator[MosquittoBroker]:
    users = {box.identity.device_id: "pw-dev", RELAY_USER: "pw-relay"}
    with MosquittoBroker(tmp_path / "broker", users=users, extra_config=BROKER_TUNING) as b:
        yield b


def _worker(broker: MosquittoBroker, db: Database, client_id: str) -> Consumer:
    config = MqttConfig.from_url(broker.url(RELAY_USER, "pw-relay"), client_id=client_id)
    consumer = Consumer(config, Ingestor(db), IngestConfig(batch_wait_ms=5))
    consumer.start()
    assert consumer.wait_connected(10), broker.log()
    return consumer


def _stored_seqs(db: Database) -> list[int]:
    with db.transaction() as tx:
        return [int(r[0]) for r in tx.all("SELECT seq FROM receipts ORDER BY seq")]


def test_receipts_are_acked_after_they_are_stored(broker: MosquittoBroker, db: Database, box: Box) -> None:
    worker = _worker(broker, db, "relay-1")
    device = Device(broker, box.identity.device_id, "pw-dev")
    try:
        box.record(3)
        device.publish("receipts", receipt_items(box))
        stored, rejected = device.acked(3)
        assert stored == ["r1", "r2", "r3"]
        assert rejected == []
        assert _stored_seqs(db) == [1, 2, 3]
        forged = receipt_items(box)[0][1]
        forged["signed"]["units"] = 7
        device.publish("receipts", [("r1-forged", forged)])
        stored, rejected = device.acked(1)
        assert rejected[0]["id"] == "r1-forged"
        assert rejected[0]["reason"].startswith("BadSignature")
    finally:
        device.close()
        worker.stop()


@pytest.mark.slow
def test_two_workers_split_the_stream_and_store_each_receipt_once(
    broker: MosquittoBroker, db: Database, box: Box
) -> None:
    workers = [_worker(broker, db, f"relay-{i}") for i in (1, 2)]
    device = Device(broker, box.identity.device_id, "pw-dev")
    try:
        box.record(200)
        items = receipt_items(box)
        for i in range(0, 200, 2):
            device.publish("receipts", items[i : i + 2])
        for i in range(0, 200, 50):  # resends: duplicates are acked again, stored once
            device.publish("receipts", items[i : i + 2])
        stored, rejected = device.acked(208)
        assert rejected == []
        assert sorted(set(stored)) == sorted(i for i, _ in items)
        assert _stored_seqs(db) == list(range(1, 201))
        assert all(w.processed > 0 for w in workers), [w.processed for w in workers]
    finally:
        device.close()
        for w in workers:
            w.stop()


class _FlakyIngestor(Ingestor):
    """The database refuses the first ``failures`` batches (as if PostgreSQL were restarting)."""

    def __init__(self, db: Database, failures: int) -> None:
        super().__init__(db)
        self.failures = failures

    def handle(self, messages: Sequence[UpMessage]) -> list[Ack]:
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("database restarting")
        return super().handle(messages)


def test_nothing_is_acked_while_the_database_refuses_and_all_is_stored_after(
    broker: MosquittoBroker, db: Database, box: Box
) -> None:
    config = MqttConfig.from_url(broker.url(RELAY_USER, "pw-relay"), client_id="relay-flaky")
    flaky = _FlakyIngestor(db, failures=3)
    worker = Consumer(config, flaky, IngestConfig(batch_wait_ms=5, retry_s=0.2))
    worker.start()
    assert worker.wait_connected(10)
    device = Device(broker, box.identity.device_id, "pw-dev")
    try:
        box.record(5)
        device.publish("receipts", receipt_items(box))
        with pytest.raises(queue.Empty):
            device.acks.get(timeout=0.4)  # the first attempts fail: no ack goes out
        stored, rejected = device.acked(5)
        assert (stored, rejected) == (["r1", "r2", "r3", "r4", "r5"], [])
        assert flaky.failures == 0
        assert _stored_seqs(db) == [1, 2, 3, 4, 5]
    finally:
        device.close()
        worker.stop()


def _poison_payloads(device: str, envelope: dict[str, Any]) -> list[tuple[str, bytes]]:
    """``(kind, payload)`` of messages that used to stop a worker's ingest thread for good."""
    keyid_list = json.loads(json.dumps(envelope))
    keyid_list["signed"]["keyid"] = [keyid_list["signed"]["keyid"]]
    nan = json.loads(json.dumps(envelope))
    nan["signed"]["units"] = float("nan")

    def doc(kind: str, items: list[dict[str, Any]]) -> bytes:
        return json.dumps({"v": 1, "device": device, "kind": kind, "items": items}, allow_nan=True).encode()

    deep = doc("health", [{"id": "p-deep", "body": {}}]).replace(b"{}", b"[" * 50_000 + b"]" * 50_000)
    return [
        ("receipts", doc("receipts", [{"id": "p-keyid", "body": keyid_list}])),
        ("receipts", doc("receipts", [{"id": "p-nan", "body": nan}])),
        ("health", deep),
        ("health", doc("health", [{"id": "p-huge", "body": {"n": 2**70}}, {"id": ["p"], "body": {}}])),
        ("receipts", b"\xff\xfe not even UTF-8"),
    ]


def test_poison_first_then_every_real_receipt_is_stored(broker: MosquittoBroker, db: Database, box: Box) -> None:
    """Malformed messages ahead of the device's real traffic: refused with reasons, acked; the worker carries on."""
    worker = _worker(broker, db, "relay-poisoned")
    device = Device(broker, box.identity.device_id, "pw-dev")
    try:
        box.record(20)
        items = receipt_items(box)
        for kind, payload in _poison_payloads(box.identity.device_id, items[0][1]):
            topic = f"btt/v1/dev/{box.identity.device_id}/up/{kind}"
            device.client.publish(topic, payload, qos=1).wait_for_publish(5)
        _, rejected = device.acked(3)  # p-keyid, p-nan, p-huge; the rest name no id the relay can trust
        assert {r["id"]: r["permanent"] for r in rejected} == {"p-keyid": True, "p-nan": True, "p-huge": True}
        for i in range(0, 20, 5):
            device.publish("receipts", items[i : i + 5])
        stored, rejected = device.acked(20)
        assert (sorted(stored), rejected) == (sorted(i for i, _ in items), [])
        assert _stored_seqs(db) == list(range(1, 21))
        assert worker.failure is None
        with db.transaction() as tx:
            recorded = {str(r[0]) for r in tx.all("SELECT item_id FROM rejects")}
        assert recorded == {"p-keyid", "p-nan", "p-huge", "*"}
    finally:
        device.close()
        worker.stop()


class _BuggyIngestor(Ingestor):
    """An ingest with a bug: every batch raises something that is not a storage error."""

    def handle(self, messages: Sequence[UpMessage]) -> list[Ack]:
        raise KeyError("a bug")


def test_an_unexpected_error_ends_the_worker_and_acknowledges_nothing(
    broker: MosquittoBroker, db: Database, box: Box
) -> None:
    config = MqttConfig.from_url(broker.url(RELAY_USER, "pw-relay"), client_id="relay-buggy")
    failed: queue.Queue[BaseException] = queue.Queue()
    worker = Consumer(config, _BuggyIngestor(db), IngestConfig(batch_wait_ms=5), on_failure=failed.put)
    worker.start()
    assert worker.wait_connected(10)
    device = Device(broker, box.identity.device_id, "pw-dev")
    try:
        box.record(2)
        device.publish("receipts", receipt_items(box))
        assert isinstance(failed.get(timeout=10), KeyError)
        assert isinstance(worker.failure, KeyError)
        assert not worker.wait_connected(0)
        with pytest.raises(queue.Empty):
            device.acks.get(timeout=0.3)
    finally:
        device.close()
        worker.stop()
    # the broker kept what was not PUBACKed: a healthy worker on the same session stores it
    healthy = _worker(broker, db, "relay-buggy")
    try:
        wait_until(lambda: _stored_seqs(db) == [1, 2], 10, lambda: f"receipts 1 and 2 stored, not {_stored_seqs(db)}")
    finally:
        healthy.stop()


def test_btt_relay_run_exits_non_zero_when_its_consumer_fails(
    broker: MosquittoBroker, db: Database, box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Ingestor, "handle", _BuggyIngestor.handle)
    mqtt_config = MqttConfig.from_url(broker.url(RELAY_USER, "pw-relay"), client_id="relay-run")
    config = RelayConfig(db="unused", mqtt=mqtt_config, ingest=IngestConfig(batch_wait_ms=5))
    stop = threading.Event()
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def serve() -> None:
        try:
            run(config, db, stop)
        except BaseException as exc:  # handed to the test thread
            outcome.put(exc)
        else:
            outcome.put(None)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    device = Device(broker, box.identity.device_id, "pw-dev")
    try:
        box.record(1)
        deadline = time.monotonic() + 15
        while outcome.empty():  # the worker may still be subscribing: publish until it has taken one
            assert time.monotonic() < deadline, "btt-relay run did not stop"
            device.publish("receipts", receipt_items(box))
            time.sleep(0.2)
        error = outcome.get()
        assert isinstance(error, WorkerFailed), error
        assert isinstance(error.__cause__, KeyError)
        assert stop.is_set()
    finally:
        stop.set()
        thread.join(10)
        device.close()

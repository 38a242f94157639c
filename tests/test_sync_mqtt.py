"""Sync against a real Mosquitto (the shipped config and ACL): outages, kill -9, ACL, TLS, no patient data.

The relay's side is played by :class:`tests.mqtt_broker.StubRelay` (stores each item id once, acks it); G2's relay
replaces it in the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import AgentConfig, with_overrides
from edge.db import DB_FILENAME, connect, transaction
from edge.errors import LinkError, LinkRefused
from edge.outbox import Outbox
from edge.sync import LinkSettings, PahoLink, SyncService
from protocol.receipts import Use
from protocol.topics import ONLINE, ack_topic, presence_topic, up_topic
from tests.conftest import free_port, wait_until
from tests.mqtt_broker import PASSWORDS_OVER_TLS, RELAY_USER, MosquittoBroker, StubRelay
from tests.receipts_helpers import Box, make_box
from tests.sync_helpers import start_sync_agent

pytestmark = pytest.mark.integration

RELAY_PW = "relay-secret"
DEVICE_PW = "device-secret"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    box = make_box(tmp_path / "data")
    Outbox.migrate(box.conn)
    return box


@pytest.fixture
def broker(tmp_path: Path, box: Box) -> Iterator[MosquittoBroker]:
    users = {box.identity.device_id: DEVICE_PW, "dev-b": "b-secret", RELAY_USER: RELAY_PW}
    broker = MosquittoBroker(tmp_path / "broker", users=users)
    yield broker
    broker.stop()


@pytest.fixture
def relays() -> Iterator[list[StubRelay]]:
    started: list[StubRelay] = []
    yield started
    for relay in started:
        relay.close()


def _config(box: Box, url: str, **sync: Any) -> AgentConfig:
    values: dict[str, Any] = {"url": url, "backoff_initial_s": 0.1, "backoff_max_s": 0.5, "ack_timeout_s": 2.0}
    values.update(sync)
    return with_overrides(
        AgentConfig(), agent={"data_dir": str(box.data_dir)}, sync=values, outbox={"feed_interval_s": 0.1}
    )


def _service(config: AgentConfig, box: Box) -> SyncService:
    """The sync service of ``config``'s sections, as ``build_agent`` wires it."""
    return SyncService(
        config.sync, config.agent.data_dir, Outbox.open(config), box.book, feed_interval_s=config.outbox.feed_interval_s
    )


def _receipt_ids(box: Box) -> set[str]:
    return {f"receipt:{e['signed']['seq']}:{e['signatures'][0]['sig'][:16]}" for e in box.book.receipts(box.conn)}


def _all_done(box: Box) -> bool:
    return not box.conn.execute("SELECT 1 FROM outbox WHERE state != 'done' LIMIT 1").fetchone()


@pytest.mark.slow
def test_offline_boot_catch_up_broker_restart_and_crash(
    box: Box, broker: MosquittoBroker, relays: list[StubRelay]
) -> None:
    box.record(300)
    config = _config(box, broker.url(box.identity.device_id, DEVICE_PW))
    service = _service(config, box)
    service.start()  # no broker yet: the box boots without a network and keeps trying
    try:
        time.sleep(1.0)
        assert service.counters.connects == 0
        broker.start()
        relays.append(StubRelay(broker, RELAY_PW))
        relay = relays[0]
        wait_until(lambda: relay.ids("receipt:") == _receipt_ids(box) and _all_done(box), what="catch-up")
        assert relay.presence[box.identity.device_id] == ONLINE

        box.book.close_batch(box.conn, 1000)
        box.record(200)
        broker.stop()  # the broker goes away for a while, with receipts still coming in
        box.record(100)
        time.sleep(1.5)
        broker.start()
        wait_until(
            lambda: (
                relay.ids("receipt:") == _receipt_ids(box) and len(relay.ids("settlement:")) == 1 and _all_done(box)
            ),
            what="catch-up after the broker restart",
        )
        assert len(relay.ids("receipt:")) == 600

        box.record(100)
        broker.kill()  # now it crashes (no clean shutdown, its in-memory sessions are gone) mid-stream
        box.record(100)
        broker.start()
        wait_until(
            lambda: relay.ids("receipt:") == _receipt_ids(box) and _all_done(box),
            what="catch-up after the broker crash",
        )
        assert len(relay.ids("receipt:")) == 800
        assert service.counters.connects >= 3
    finally:
        service.stop()
    wait_until(lambda: relays[0].presence[box.identity.device_id] == b"offline", 10, "presence offline")


def test_acks_kept_in_the_session_settle_without_resending(
    box: Box, broker: MosquittoBroker, relays: list[StubRelay]
) -> None:
    box.record(50)
    broker.start()
    relays.append(StubRelay(broker, RELAY_PW))
    relay = relays[0]
    relay.held_kinds = {"receipts", "settlements", "health", "results"}  # stored, acks late: the box goes offline
    config = _config(box, broker.url(box.identity.device_id, DEVICE_PW))
    service = _service(config, box)
    service.start()
    wait_until(lambda: relay.ids("receipt:") == _receipt_ids(box), what="all receipts at the relay")
    service.stop()
    assert not _all_done(box)
    device = box.identity.device_id
    relay.client.publish(
        ack_topic(device), json.dumps({"v": 1, "stored": sorted(relay.stored)}), qos=1
    ).wait_for_publish(5)
    relay.held_kinds = set()  # (for the new health report the restart queues)
    service = _service(config, box)
    service.start()  # same client id, clean start off: the broker delivers the ack it kept for us
    try:
        wait_until(lambda: _all_done(box), what="the kept ack settling the outbox")
    finally:
        service.stop()
    assert {relay.deliveries[i] for i in _receipt_ids(box)} == {1}  # nothing was sent twice


def _agent(data_dir: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return start_sync_agent(data_dir, url, os.environ, err)


@pytest.mark.slow
def test_agent_killed_mid_publish_and_restarted(box: Box, broker: MosquittoBroker, relays: list[StubRelay]) -> None:
    box.record(1500)
    expected = _receipt_ids(box)
    broker.start()
    relays.append(StubRelay(broker, RELAY_PW))
    relay = relays[0]
    url = broker.url(box.identity.device_id, DEVICE_PW)
    log = box.data_dir.parent / "agent.log"
    agent = _agent(box.data_dir, url, log)
    try:
        wait_until(lambda: len(relay.ids("receipt:")) >= 100 or agent.poll() is not None, 60, "first deliveries")
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        assert agent.returncode == -signal.SIGKILL, log.read_text()
        done = box.conn.execute("SELECT count(*) FROM outbox WHERE kind = 'receipts' AND state = 'done'").fetchone()[0]
        assert 0 < done < 1500, "the kill must land mid-stream"
        wait_until(lambda: relay.presence.get(box.identity.device_id) == b"offline", 10, "the last will")

        agent = _agent(box.data_dir, url, log)
        wait_until(lambda: relay.ids("receipt:") == expected and _all_done(box), 90, "catch-up after restart")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    assert sum(relay.deliveries[i] for i in expected) >= len(expected)  # resends happen; stored once each
    assert len(relay.ids("receipt:")) == 1500


def _link(broker: MosquittoBroker, user: str, password: str) -> PahoLink:
    link = PahoLink(LinkSettings(host="127.0.0.1", port=broker.port, client_id=f"{user}-probe", username=user,
                                 password=password, will_topic=presence_topic(user)))  # fmt: skip
    link.connect()
    return link


def test_a_device_cannot_publish_or_read_as_another(box: Box, broker: MosquittoBroker, relays: list[StubRelay]) -> None:
    broker.start()
    relays.append(StubRelay(broker, RELAY_PW))
    relay = relays[0]
    dev_a = box.identity.device_id
    a = _link(broker, dev_a, DEVICE_PW)
    b = _link(broker, "dev-b", "b-secret")
    try:
        a.subscribe(ack_topic("dev-b"))  # refused by the broker (logged), so nothing arrives
        a.subscribe("btt/v1/dev/+/up/#")  # nor may it read other devices' receipts
        a.subscribe(ack_topic(dev_a))
        theirs = {"id": "receipt:1:b", "body": {}}
        b.publish(up_topic("dev-b", "receipts"), json.dumps({"v": 1, "device": "dev-b", "items": [theirs]}).encode())
        body = {"id": "receipt:1:forged", "body": {}}
        a.publish(up_topic("dev-b", "receipts"), json.dumps({"v": 1, "device": "dev-b", "items": [body]}).encode())
        a.publish(presence_topic("dev-b"), b"online", retain=True)
        a.publish(ack_topic(dev_a), b'{"v":1,"stored":["receipt:9:x"]}')  # a device cannot forge its own acks
        own = {"id": "health:1", "body": {}}
        a.publish(up_topic(dev_a, "health"), json.dumps({"v": 1, "device": dev_a, "items": [own]}).encode())
        relay.client.publish(ack_topic("dev-b"), b'{"v":1,"stored":["x"]}', qos=1)
        got: list[Any] = []

        def acked() -> bool:
            got.extend(a.poll(0.05))
            b.poll(0.01)
            return any(json.loads(m.payload).get("stored") == ["health:1"] for m in got)

        wait_until(acked, 10, "the relay's ack of the allowed publish")
        for _ in range(10):
            got.extend(a.poll(0.05))
        topics = [t for t, _ in relay.payloads]
        assert "receipt:1:b" in relay.stored  # dev-b's own publish went through, to the relay only
        assert topics.count(up_topic(dev_a, "health")) == 1
        assert "receipt:1:forged" not in relay.stored
        assert topics.count(up_topic("dev-b", "receipts")) == 1
        assert presence_topic("dev-b") not in topics
        assert [(m.topic, json.loads(m.payload)["stored"]) for m in got] == [(ack_topic(dev_a), ["health:1"])]
    finally:
        a.disconnect()
        b.disconnect()
    with pytest.raises(LinkRefused, match="refused"):
        _link(broker, dev_a, "wrong password")


def _tls_relay(
    tls: MosquittoBroker,
    client_id: str,
    seen: list[str],
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    password: str | None = None,
) -> mqtt.Client:
    """A relay stand-in on the TLS broker ``tls`` (started): it adds each item id it receives to ``seen`` and acks
    it. It logs in with a client certificate (``certfile``, ``keyfile``) or as the relay user with ``password``."""
    assert tls.pki is not None
    relay = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    relay.tls_set(ca_certs=str(tls.pki.ca), certfile=certfile, keyfile=keyfile)
    if password is not None:
        relay.username_pw_set(RELAY_USER, password)

    def on_message(client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        doc = json.loads(message.payload)
        ids = [i["id"] for i in doc["items"]]
        seen.extend(ids)
        client.publish(ack_topic(doc["device"]), json.dumps({"v": 1, "stored": ids}), qos=1)

    relay.on_message = on_message
    relay.on_connect = lambda c, *_: c.subscribe("$share/btt-relay/btt/v1/dev/+/up/#", qos=1)
    relay.connect("127.0.0.1", tls.port)
    relay.loop_start()
    return relay


def test_tls_with_a_client_certificate(tmp_path: Path, box: Box, relays: list[StubRelay]) -> None:
    dev = box.identity.device_id
    tls = MosquittoBroker(tmp_path / "tls", users={dev: "", "dev-b": "", RELAY_USER: ""}, tls=True)
    tls.start()
    try:
        assert tls.pki is not None
        cert, key = tls.pki.client(dev)
        box.record(20)
        config = _config(box, tls.url(), ca_file=str(tls.pki.ca), cert_file=str(cert), key_file=str(key))
        relay_cert, relay_key = tls.pki.client(RELAY_USER)
        seen: list[str] = []
        relay = _tls_relay(tls, "relay-tls", seen, certfile=str(relay_cert), keyfile=str(relay_key))
        service = _service(config, box)
        service.start()
        try:
            wait_until(lambda: _all_done(box) and len([i for i in seen if i.startswith("receipt:")]) == 20, 30)
        finally:
            service.stop()
        # the certificate's CN is the identity: dev-b's certificate cannot publish under this device's id
        b_cert, b_key = tls.pki.client("dev-b")
        probe = PahoLink(LinkSettings(host="127.0.0.1", port=tls.port, client_id="probe", tls=True,
                                      ca_file=str(tls.pki.ca), cert_file=str(b_cert), key_file=str(b_key)))  # fmt: skip
        probe.connect()
        for device, item in ((dev, "forged"), ("dev-b", "b-own")):
            doc = {"v": 1, "device": device, "kind": "health", "items": [{"id": item, "body": {}}]}
            probe.publish(up_topic(device, "health"), json.dumps(doc).encode())
        wait_until(lambda: (probe.poll(0.05), "b-own" in seen)[1], 10, "dev-b's own publish")
        probe.disconnect()
        relay.disconnect()
        relay.loop_stop()
        assert "forged" not in seen
        no_cert = PahoLink(LinkSettings(host="127.0.0.1", port=tls.port, client_id="anon", tls=True,
                                        ca_file=str(tls.pki.ca), connect_timeout_s=3))  # fmt: skip
        with pytest.raises(LinkError):
            no_cert.connect()
    finally:
        tls.stop()


def test_tls_with_a_password(tmp_path: Path, box: Box, relays: list[StubRelay]) -> None:
    dev = box.identity.device_id
    users = {dev: DEVICE_PW, RELAY_USER: RELAY_PW}
    tls = MosquittoBroker(tmp_path / "tls-pw", users=users, tls=True, extra_config=PASSWORDS_OVER_TLS)
    tls.start()
    try:
        assert tls.pki is not None
        secret = tmp_path / "mqtt-password"
        secret.write_text(DEVICE_PW + "\n")
        box.record(5)
        config = _config(box, tls.url(), ca_file=str(tls.pki.ca), password_file=str(secret))
        seen: list[str] = []
        relay = _tls_relay(tls, "relay-tls-pw", seen, password=RELAY_PW)
        service = _service(config, box)
        service.start()
        try:
            wait_until(lambda: _all_done(box) and len([i for i in seen if i.startswith("receipt:")]) == 5, 30)
        finally:
            service.stop()
            relay.disconnect()
            relay.loop_stop()
        wrong = PahoLink(LinkSettings(host="127.0.0.1", port=tls.port, client_id="x", tls=True,
                                      ca_file=str(tls.pki.ca), username=dev, password="wrong"))  # fmt: skip
        with pytest.raises(LinkRefused):
            wrong.connect()
    finally:
        tls.stop()


def test_no_patient_data_in_any_payload(box: Box, broker: MosquittoBroker, relays: list[StubRelay]) -> None:
    patient_name, patient_id = "DOE^JANE", "PID-4711-XR"
    study, series, sop = (
        "1.2.826.0.1.3680043.10.543.1",
        "1.2.826.0.1.3680043.10.543.1.2",
        "1.2.826.0.1.3680043.10.543.1.2.3",
    )
    with transaction(box.conn):
        box.book.record(box.conn, Use(kind="exposure", study_uid=study))
        box.book.record(box.conn, Use(kind="analysis", study_uid=study, bundle_id="caries", bundle_version="1.0.0",
                                      output_digest="sha256:" + "ab" * 32))  # fmt: skip
    box.book.close_batch(box.conn, 10)
    broker.start()
    relays.append(StubRelay(broker, RELAY_PW))
    relay = relays[0]
    config = _config(box, broker.url(box.identity.device_id, DEVICE_PW))
    service = _service(config, box)
    service.start()
    try:
        wait_until(lambda: _all_done(box) and len(relay.ids("receipt:")) == 2 and relay.ids("settlement:"), 30)
    finally:
        service.stop()
    kinds = {t.rsplit("/", 1)[1] for t, _ in relay.payloads}
    assert {"certificate", "receipts", "settlements", "health", "presence"} <= kinds
    needles = [patient_name, "DOE", "JANE", patient_id, study, series, sop, "1.2.826.0.1.3680043"]
    for topic, payload in relay.payloads:
        text = payload.decode("utf-8")
        for needle in needles:
            assert needle not in text, f"{needle!r} leaked in a payload on {topic}"
    db_conn = connect(box.data_dir / DB_FILENAME, readonly=True)
    try:
        bodies = " ".join(r[0] for r in db_conn.execute("SELECT body FROM outbox"))
    finally:
        db_conn.close()
    assert study not in bodies


def test_paho_failures_become_link_errors(tmp_path: Path) -> None:
    nobody = PahoLink(LinkSettings(host="127.0.0.1", port=free_port(), client_id="x", connect_timeout_s=2))
    with pytest.raises(LinkError, match="cannot connect"):
        nobody.connect()
    with pytest.raises(LinkError, match="not connected"):
        nobody.publish("btt/v1/dev/x/up/health", b"{}")
    missing_ca = str(tmp_path / "missing-ca.pem")
    tls = PahoLink(LinkSettings(host="127.0.0.1", port=free_port(), client_id="x", tls=True, ca_file=missing_ca))
    with pytest.raises(LinkError, match="TLS setup failed"):
        tls.connect()
    nobody.disconnect()  # never raises

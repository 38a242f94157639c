"""The relay worker's own MQTT v5 connection: packets (pure) and a real Mosquitto (sessions, TLS, refusals)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_relay import subscriber
from cloud_relay.config import IngestConfig, MqttConfig
from cloud_relay.consumer import Consumer
from cloud_relay.errors import BrokerError
from cloud_relay.ingest import Ingestor
from cloud_relay.subscriber import (
    PUBLISH,
    Delivery,
    PacketReader,
    Subscription,
    parse_publish,
    puback_packet,
    publish_packet,
)
from protocol.topics import UP_FILTER, shared
from tests.mqtt_broker import RELAY_USER, MosquittoBroker
from tests.relay_helpers import throwaway_db

SHARED = shared("test", UP_FILTER)


def _deliveries(data: bytes) -> list[Delivery]:
    return [parse_publish(flags, body) for kind, flags, body in PacketReader().feed(data) if kind == PUBLISH]


def test_packets_split_anywhere_are_reassembled_in_order() -> None:
    big = b"x" * 200_000  # a four-byte remaining length
    stream = b"".join(
        [publish_packet("btt/v1/dev/a/up/receipts", b"one", qos=1, packet_id=7), publish_packet("t/b", big)]
    )
    reader = PacketReader()
    packets = [p for i in range(0, len(stream), 3) for p in reader.feed(stream[i : i + 3])]
    assert [parse_publish(flags, body) for _, flags, body in packets] == [
        Delivery("btt/v1/dev/a/up/receipts", b"one", 1, 7),
        Delivery("t/b", big, 0, 0),
    ]


def test_publish_properties_are_skipped_and_bad_publishes_refused() -> None:
    body = b"\x00\x03a/b" + b"\x00\x09" + b"\x05\x01\x01\x02\x00\x00" + b"payload"  # QoS 1, 5 bytes of properties
    assert parse_publish(0x02, body) == Delivery("a/b", b"payload", 1, 9)
    with pytest.raises(BrokerError, match="QoS 2"):
        parse_publish(0x04, body)
    with pytest.raises(BrokerError, match="malformed"):
        parse_publish(0x02, b"\x00\x09a/")
    with pytest.raises(BrokerError, match="topic alias"):
        parse_publish(0x00, b"\x00\x00\x03\x23\x00\x01")  # an empty topic with a topic alias
    assert puback_packet(0x1234) == b"\x40\x02\x12\x34"


def _publisher(broker: MosquittoBroker, user: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{user}", protocol=mqtt.MQTTv5)
    client.username_pw_set(user, "pw-dev")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def _receive(sub: Subscription, count: int, timeout: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += sub.receive(0.2)
    return got


@pytest.mark.integration
def test_a_resumed_session_keeps_what_arrives_with_the_connack_and_redelivers_what_was_not_acked(
    tmp_path: Path,
) -> None:
    with MosquittoBroker(tmp_path / "broker", users={"dev-a": "pw-dev", RELAY_USER: "pw-relay"}) as broker:
        config = MqttConfig.from_url(broker.url(RELAY_USER, "pw-relay"), client_id="relay-sub", keepalive_s=5)
        with closing(Subscription(config, SHARED)) as first:
            first.open()
            assert not first.session_present
        # away: the broker queues for the session
        device = _publisher(broker, "dev-a")
        for i in range(50):
            device.publish("btt/v1/dev/dev-a/up/health", str(i).encode(), qos=1).wait_for_publish(5)
        device.loop_stop()
        device.disconnect()
        with closing(Subscription(config, SHARED)) as second:
            second.open()  # the queued messages come right behind the CONNACK, before the SUBACK
            assert second.session_present
            got = _receive(second, 50)
            assert [d.payload for d in got] == [str(i).encode() for i in range(50)]
            second.send(b"".join(puback_packet(d.packet_id) for d in got[:20]))
        with closing(Subscription(config, SHARED)) as third:  # the 30 not acknowledged come again
            third.open()
            again = _receive(third, 30)
            assert [d.payload for d in again] == [str(i).encode() for i in range(20, 50)]
            third.send(b"".join(puback_packet(d.packet_id) for d in again))
            assert third.receive(0.3) == []


@pytest.mark.integration
def test_the_keep_alive_pings_and_the_broker_answers(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker", users={RELAY_USER: "pw-relay"}) as broker:
        config = MqttConfig.from_url(broker.url(RELAY_USER, "pw-relay"), client_id="relay-ka", keepalive_s=5)
        now = [time.monotonic()]
        sub = Subscription(config, SHARED, clock=lambda: now[0])
        sub.open()
        try:
            now[0] += 3.0
            assert sub.receive(1.0) == []  # half the keep-alive passed: PINGREQ; the PINGRESP is read and dropped
            now[0] += 6.0
            assert sub.receive(0.2) == []  # answered: no "did not answer a ping"
        finally:
            sub.close()


@pytest.mark.integration
def test_a_wrong_password_or_no_broker_is_a_broker_error(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker", users={RELAY_USER: "pw-relay"}) as broker:
        wrong = MqttConfig.from_url(broker.url(RELAY_USER, "nope"), client_id="relay-wrong")
        with pytest.raises(BrokerError, match="refused the connection"):
            Subscription(wrong, SHARED).open()
        config = MqttConfig.from_url(broker.url(RELAY_USER, "pw-relay"), client_id="relay-down")
        broker.stop()
        with pytest.raises(BrokerError, match="cannot connect"):
            Subscription(config, SHARED).open()


@pytest.mark.integration
def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "tls", users={"dev-a": "", RELAY_USER: ""}, tls=True)
    broker.start()
    try:
        assert broker.pki is not None
        cert, key = broker.pki.client(RELAY_USER)
        config = MqttConfig.from_url(
            broker.url(), client_id="relay-tls", ca_file=broker.pki.ca, cert_file=cert, key_file=key
        )
        with closing(Subscription(config, SHARED)) as sub:
            sub.open()
            device_cert, device_key = broker.pki.client("dev-a")
            device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-a", protocol=mqtt.MQTTv5)
            device.tls_set(ca_certs=str(broker.pki.ca), certfile=str(device_cert), keyfile=str(device_key))
            device.connect("127.0.0.1", broker.port)
            device.loop_start()
            device.publish("btt/v1/dev/dev-a/up/health", b"over tls", qos=1).wait_for_publish(5)
            device.loop_stop()
            device.disconnect()
            (got,) = _receive(sub, 1)
            assert got.payload == b"over tls"
            sub.send(puback_packet(got.packet_id))
        untrusted = MqttConfig.from_url(broker.url(), client_id="relay-untrusted")  # the system CAs only
        with pytest.raises(BrokerError, match="cannot connect"):
            Subscription(untrusted, SHARED).open()
    finally:
        broker.stop()


@contextmanager
def _silent_broker() -> Iterator[MqttConfig]:
    """A TCP listener that completes handshakes and never answers: a broker that hangs before CONNACK."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield MqttConfig.from_url(f"mqtt://127.0.0.1:{listener.getsockname()[1]}", client_id="relay-silent")


def test_opening_gives_up_soon_after_cancel_while_the_broker_is_silent() -> None:
    cancel = threading.Event()
    errors: list[BrokerError] = []
    with _silent_broker() as config:
        sub = Subscription(config, SHARED, cancel=cancel)

        def opening() -> None:
            try:
                sub.open(timeout=30.0)
            except BrokerError as exc:
                errors.append(exc)

        thread = threading.Thread(target=opening)
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        cancel.set()
        thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2 * subscriber._OPEN_SLICE_S + 0.5
    assert "cancelled while waiting for the broker" in str(errors[0])


def test_connecting_is_tried_in_slices_until_cancel_or_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that drops SYNs: each attempt times out; cancel is seen between attempts, the deadline ends them."""
    attempts: list[float] = []
    now = [0.0]

    def dropped(address: object, timeout: float) -> socket.socket:
        attempts.append(timeout)
        now[0] += timeout
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", dropped)  # what cloud_relay.subscriber connects with
    config = MqttConfig.from_url("mqtt://192.0.2.1:1883", client_id="relay-syn")
    with pytest.raises(BrokerError, match="no answer within 2 s"):
        Subscription(config, SHARED, clock=lambda: now[0]).open(timeout=2.0)
    assert attempts == [subscriber._OPEN_SLICE_S] * int(2.0 / subscriber._OPEN_SLICE_S)
    cancel = threading.Event()
    cancel.set()
    attempts.clear()
    with pytest.raises(BrokerError, match="cancelled while connecting"):
        Subscription(config, SHARED, clock=lambda: now[0], cancel=cancel).open(timeout=2.0)
    assert len(attempts) == 1


def test_a_consumer_stops_promptly_while_its_broker_is_silent(tmp_path: Path) -> None:
    with _silent_broker() as config, throwaway_db("sqlite", tmp_path) as db:
        consumer = Consumer(config, Ingestor(db), IngestConfig())
        consumer.start()
        time.sleep(0.3)
        started = time.monotonic()
        consumer.stop()
        assert time.monotonic() - started < 2 * subscriber._OPEN_SLICE_S + 0.5
        assert not consumer.wait_connected(0)

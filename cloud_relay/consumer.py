"""The MQTT side of a relay worker: a shared subscription in, application acks out (paho-mqtt 2, MQTT v5).

The worker subscribes to ``$share/<group>/btt/v1/dev/+/up/#`` with QoS 1 and a persistent session (clean
start off, session expiry), so the broker splits the devices' stream between the workers of a group and keeps
what a worker has not acknowledged while it is away. Messages are acknowledged to the broker by hand
(``manual_ack``): a message's PUBACK goes out only after the transaction that stored it has committed, and the
application ack to the device is published after that commit too. A worker killed at any point therefore loses
nothing: the broker redelivers what it had not PUBACKed, the device resends what it had no application ack for,
and the store de-duplicates.

Messages are grouped (up to ``batch_max`` or ``batch_wait_ms``) into one transaction; a batch the database
refuses is retried after ``retry_s`` without acking anything.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_relay.config import IngestConfig, MqttConfig
from cloud_relay.errors import BrokerError, StorageError
from cloud_relay.ingest import TOPIC_FILTER, Ingestor, UpMessage, ack_topic
from edge.logs import event

__all__ = ["Consumer", "mqtt_client"]

log = logging.getLogger("cloud_relay.consumer")


def mqtt_client(config: MqttConfig, *, client_id: str, manual_ack: bool = False) -> mqtt.Client:
    """A paho MQTT v5 client with the relay's credentials, TLS and reconnect delay from ``config`` (not connected)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    if config.username is not None:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        client.tls_set(
            ca_certs=None if config.ca_file is None else str(config.ca_file),
            certfile=None if config.cert_file is None else str(config.cert_file),
            keyfile=None if config.key_file is None else str(config.key_file),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


@dataclass(frozen=True)
class _Received:
    message: UpMessage
    mid: int
    qos: int


class Consumer:
    """One relay worker's consumer loop (see the module docstring)."""

    def __init__(self, mqtt_config: MqttConfig, ingestor: Ingestor, ingest_config: IngestConfig) -> None:
        self._config = mqtt_config
        self._ingestor = ingestor
        self._ingest = ingest_config
        self._queue: queue.Queue[_Received] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-ingest", daemon=True)
        self.processed = 0
        """Messages stored (or rejected) and acknowledged so far."""
        self._client = self._make_client()

    @property
    def subscription(self) -> str:
        return f"$share/{self._config.group}/{TOPIC_FILTER}"

    def _make_client(self) -> mqtt.Client:
        c = self._config
        client = mqtt_client(c, client_id=c.client_id, manual_ack=True)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(c.receive_maximum)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying) and start the ingest thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._config.session_expiry_s
        props.ReceiveMaximum = self._config.receive_maximum
        try:
            self._client.connect_async(
                self._config.host, self._config.port, self._config.keepalive_s, clean_start=False, properties=props
            )
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {self._config.host}:{self._config.port}: {exc}") from exc
        self._client.loop_start()
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """Whether the worker is connected and subscribed within ``timeout`` seconds."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Finish the batch in hand, then disconnect (unprocessed messages stay with the broker)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()

    # --- paho callbacks (paho's network thread) -------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            event(log, "broker refused the connection", level=logging.ERROR, reason=str(reason))
            return
        result, _ = client.subscribe(self.subscription, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            event(log, "subscribe failed", level=logging.ERROR, result=str(result))
            return
        event(log, "connected", broker=f"{self._config.host}:{self._config.port}", session=flags.session_present)
        self._connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            event(log, "disconnected; reconnecting", level=logging.WARNING, reason=str(reason))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._queue.put(_Received(UpMessage(message.topic, bytes(message.payload)), message.mid, message.qos))

    # --- the ingest thread --------------------------------------------------------------------------------

    def _next_batch(self) -> list[_Received]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self._ingest.batch_wait_ms / 1000
        while len(batch) < self._ingest.batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            while batch:
                try:
                    acks = self._ingestor.handle([r.message for r in batch])
                except StorageError as exc:
                    event(log, "store failed; batch not acked, retrying", level=logging.ERROR, error=str(exc))
                    if self._stop.wait(self._ingest.retry_s):
                        return
                    continue
                for ack in acks:
                    self._client.publish(ack_topic(ack.device), ack.payload(), qos=1)
                for received in batch:
                    self._client.ack(received.mid, received.qos)
                self.processed += len(batch)
                batch = []

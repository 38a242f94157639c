"""The capacity coordinator on MQTT: offers and results in, jobs out (paho-mqtt 2, MQTT v5).

It reads ``btt/v1/dev/+/up/offers`` through its own shared-subscription group (``btt-capacity``), so every relay
worker's :class:`~cloud_relay.consumer.Consumer` still stores and acknowledges those items as before, and one
capacity worker sees each message once. A message is parsed by the relay's one boundary parser
(:func:`cloud_relay.messages.parse_up`; what it refuses is logged and dropped: the consumer records it) and each
item's body goes to :meth:`Coordinator.handle` (a rejected one is logged; device resends are recognised as such).
An unexpected error in either thread (paho's or the ticker) is logged with its traceback and handed to
``on_failure``, with which ``btt-relay run`` ends the process non-zero, as for the consumer. Every ``tick_s``, and
at once after an offer, a withdrawal or a result, :meth:`Coordinator.tick` runs and each job it dispatches is
published at QoS 1 on ``btt/v1/dev/{device}/cmd/capacity-job``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.config import MqttConfig
from cloud_relay.errors import BrokerError, RelayError
from cloud_relay.messages import ReportIn, parse_up
from protocol.kinds import CAPACITY_JOB, OFFERS
from protocol.topics import command_topic, shared, up_filter
from runtime.logs import event

__all__ = ["CAPACITY_GROUP", "CapacityLink"]

log = logging.getLogger("cloud_relay.capacity")

CAPACITY_GROUP = "btt-capacity"


def _mqtt_client(config: MqttConfig, *, client_id: str) -> mqtt.Client:
    """A paho MQTT v5 client with the relay's credentials, TLS and reconnect delay from ``config`` (not connected)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
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


class CapacityLink:
    """Runs a :class:`Coordinator` against the broker (module docstring)."""

    def __init__(
        self,
        config: MqttConfig,
        coordinator: Coordinator,
        *,
        tick_s: float = 1.0,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self._on_failure = on_failure
        self.failure: BaseException | None = None
        """The unexpected error that stopped the link, if one did."""
        self.coordinator = coordinator
        self.tick_s = tick_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-capacity", daemon=True)
        client = _mqtt_client(config, client_id=f"{config.client_id}-capacity")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        try:
            self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {self.config.host}:{self.config.port}: {exc}") from exc
        self._client.loop_start()
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            event(log, "capacity link refused", level=logging.ERROR, reason=str(reason))
            return
        client.subscribe(shared(CAPACITY_GROUP, up_filter(OFFERS)), qos=1)
        self._connected.set()
        event(log, "capacity link connected")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        event(log, "capacity link disconnected", level=logging.WARNING, reason=str(reason))

    def _fail(self, exc: Exception) -> None:
        log.critical("capacity link failed", exc_info=exc)
        self.failure = exc
        self._stop.set()
        self._wake.set()
        if self._on_failure is not None:
            self._on_failure(exc)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._handle(message.topic, bytes(message.payload))
        except Exception as exc:  # a bug, not bad input (that is refused): end loudly
            self._fail(exc)

    def _handle(self, topic: str, payload: bytes) -> None:
        parsed = parse_up(topic, payload)
        for refusal in parsed.refused:
            event(log, "capacity item refused", level=logging.WARNING, device=parsed.device, reason=refusal.reason)
        for item in parsed.items:
            if not isinstance(item, ReportIn):
                continue
            try:
                kind = self.coordinator.handle(parsed.device, item.body)
            except RelayError as exc:
                event(log, "capacity message refused", level=logging.WARNING, device=parsed.device, reason=str(exc))
                continue
            event(log, "capacity message", device=parsed.device, kind=kind)
        self._wake.set()

    def _run(self) -> None:
        try:
            self._tick_loop()
        except Exception as exc:
            self._fail(exc)

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.tick_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                dispatched = self.coordinator.tick()
            except RelayError:
                log.exception("capacity tick failed")
                continue
            for device, envelope in dispatched:
                self._client.publish(command_topic(device, CAPACITY_JOB), json.dumps(envelope), qos=1)
                event(log, "capacity job dispatched", device=device, job=envelope["signed"]["job_id"])

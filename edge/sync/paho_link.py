"""The real :class:`~edge.sync.link.MqttLink`: paho-mqtt 2.x, MQTT v5, driven from the caller's thread.

Each :meth:`PahoLink.connect` builds a fresh client (callback API version 2) with clean start off and a
session expiry, TLS (CA, optional client certificate) or username/password, and a retained last will on the
presence topic; then it waits for the CONNACK. Reconnecting is the caller's job (with full-jitter backoff),
which is why paho's own reconnect loop is not used. paho, socket and TLS errors become ``LinkError`` here and
nowhere else.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import LinkError, LinkRefused
from edge.sync.link import Inbound, LinkSettings
from runtime.logs import event

__all__ = ["PahoLink"]

log = logging.getLogger("edge.sync")


class PahoLink:
    """An MQTT v5 session over paho-mqtt; see :class:`~edge.sync.link.MqttLink`."""

    def __init__(self, settings: LinkSettings) -> None:
        self._settings = settings
        self._client: mqtt.Client | None = None
        self._connack: ReasonCode | None = None
        self._inbox: list[Inbound] = []

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    # --- paho callbacks (run inside loop(), on the caller's thread) ---------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        self._connack = reason

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.append(Inbound(message.topic, bytes(message.payload)))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _props: Any) -> None:
        if reason.is_failure:
            event(log, "broker refused a publish", level=logging.WARNING, mid=mid, reason=str(reason))

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode], _props: Any) -> None:
        for reason in reasons:
            if reason.is_failure:
                event(log, "broker refused a subscription", level=logging.WARNING, mid=mid, reason=str(reason))

    # --- the interface ----------------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        s = self._settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5)
        client.connect_timeout = s.connect_timeout_s
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            try:
                client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise LinkError(f"TLS setup failed: {exc}") from exc
        if s.will_topic:
            client.will_set(s.will_topic, s.will_payload, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def connect(self) -> None:
        self.disconnect()
        s = self._settings
        client = self._new_client()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s
        self._connack = None
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket.gaierror are OSErrors
            raise LinkError(f"cannot connect to {s.host}:{s.port}: {exc}") from exc
        reason = self._await_connack(client)
        if reason.is_failure:
            client.disconnect()
            raise LinkRefused(f"broker {s.host}:{s.port} refused the connection: {reason}")
        self._client = client

    def _await_connack(self, client: mqtt.Client) -> ReasonCode:
        s = self._settings
        deadline = time.monotonic() + s.connect_timeout_s
        while True:
            rc = client.loop(0.05)
            if self._connack is not None:
                return self._connack
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise LinkError(f"connection to {s.host}:{s.port} dropped: {mqtt.error_string(rc)}")
            if time.monotonic() > deadline:
                client.disconnect()
                raise LinkError(f"no CONNACK from {s.host}:{s.port} within {s.connect_timeout_s}s")

    def subscribe(self, topic: str) -> None:
        rc, _ = self._require().subscribe(topic, qos=1)
        self._check(rc, f"subscribe to {topic}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self._require().publish(topic, payload, qos=1, retain=retain)
        self._check(info.rc, f"publish to {topic}")

    def poll(self, timeout: float) -> list[Inbound]:
        rc = self._require().loop(timeout)
        self._check(rc, "network loop")
        inbox, self._inbox = self._inbox, []
        return inbox

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
            deadline = time.monotonic() + 1.0
            while client.is_connected() and time.monotonic() < deadline:
                client.loop(0.05)
        except (OSError, ValueError) as exc:
            event(log, "disconnect failed", level=logging.DEBUG, error=str(exc))

    # --- helpers ----------------------------------------------------------------------------------------

    def _require(self) -> mqtt.Client:
        if self._client is None:
            raise LinkError("not connected")
        return self._client

    def _check(self, rc: MQTTErrorCode | int, what: str) -> None:
        # MQTT_ERR_QUEUE_SIZE never happens: the client's queue is unbounded and the service bounds its window.
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._client = None
            raise LinkError(f"{what} failed: {mqtt.error_string(rc)}")

"""The MQTT side of a relay worker: a shared subscription in, application acks out (MQTT v5).

The worker subscribes to ``$share/<group>/btt/v1/dev/+/up/#`` with QoS 1 and a persistent session (clean
start off, session expiry), so the broker splits the devices' stream between the workers of a group and keeps
what a worker has not acknowledged while it is away. One thread receives a batch (up to ``batch_max`` messages,
waiting at most ``batch_wait_ms`` after the first), stores it in one transaction, and only after the commit sends
the batch's application acks (QoS 0: a lost one makes the device resend, and the store de-duplicates) and its
PUBACKs, together. A worker killed at any point therefore loses nothing: the broker redelivers what it had not
PUBACKed, the device resends what it had no application ack for, and the store de-duplicates. A batch the
database refuses is retried after ``retry_s`` without acking anything; a lost connection is re-established with
exponential backoff and full jitter (1-30 s) and the batch in hand is dropped (the broker redelivers it).

Malformed input is not an error here: the ingest refuses it item by item (:mod:`cloud_relay.messages`) and the
refusals are acknowledged like any other answer. Any other exception in the consumer thread is a bug or a
broken invariant; the thread does not carry on around it: it logs the traceback, keeps the error in
:attr:`Consumer.failure`, acknowledges nothing of the batch in hand (the broker redelivers it), and calls
``on_failure``, which ``btt-relay run`` uses to end the process with a non-zero status (systemd restarts it)
instead of leaving an API worker up whose ingest has died.

The connection is :class:`cloud_relay.subscriber.Subscription`, not paho-mqtt: see that module for why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cloud_relay.config import IngestConfig, MqttConfig
from cloud_relay.errors import BrokerError, StorageError
from cloud_relay.ingest import Ingestor, UpMessage
from cloud_relay.subscriber import Delivery, Subscription, puback_packet, publish_packet
from protocol.topics import UP_FILTER, ack_topic, shared
from runtime.backoff import Backoff
from runtime.logs import event

__all__ = ["Consumer"]

log = logging.getLogger("cloud_relay.consumer")

_POLL_S = 0.2
"""Longest wait for a message before the loop looks at ``stop`` (and the keep-alive) again."""


class Consumer:
    """One relay worker's consumer loop (see the module docstring)."""

    def __init__(
        self,
        mqtt_config: MqttConfig,
        ingestor: Ingestor,
        ingest_config: IngestConfig,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._config = mqtt_config
        self._on_failure = on_failure
        self._ingestor = ingestor
        self._ingest = ingest_config
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._backoff = Backoff(1.0, 30.0)
        self._thread = threading.Thread(target=self._run, name="relay-ingest", daemon=True)
        self.processed = 0
        """Messages stored (or rejected) and acknowledged so far."""
        self.failure: BaseException | None = None
        """The unexpected error that ended the consumer thread, if one did (module docstring)."""

    @property
    def subscription(self) -> str:
        return shared(self._config.group, UP_FILTER)

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying) and consume."""
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """Whether the worker is connected and subscribed within ``timeout`` seconds."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Finish the batch in hand, then disconnect (unprocessed messages stay with the broker)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    # --- the consumer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._consume()
        except Exception as exc:  # a bug, not bad input: end loudly (module docstring)
            log.critical("relay consumer failed; nothing of the batch in hand was acknowledged", exc_info=exc)
            self.failure = exc
            self._connected.clear()
            if self._on_failure is not None:
                self._on_failure(exc)

    def _consume(self) -> None:
        broker = f"{self._config.host}:{self._config.port}"
        while not self._stop.is_set():
            connection = Subscription(self._config, self.subscription, cancel=self._stop)
            try:
                connection.open()
                event(log, "connected", broker=broker, session=connection.session_present)
                self._backoff.reset()
                self._connected.set()
                self._serve(connection)
            except BrokerError as exc:
                if self._stop.is_set():
                    break  # stopped while connecting: nothing to report
                if self._connected.is_set():
                    event(log, "disconnected; reconnecting", level=logging.WARNING, reason=str(exc))
                else:
                    event(log, "cannot connect; retrying", level=logging.ERROR, broker=broker, reason=str(exc))
                self._connected.clear()
                self._stop.wait(self._backoff.next_delay())
            finally:
                connection.close()
        self._connected.clear()

    def _serve(self, connection: Subscription) -> None:
        """Receive, store, acknowledge, until ``stop``; BrokerError when the connection fails."""
        received: list[Delivery] = []
        while not self._stop.is_set():
            received = self._fill(connection, received)
            batch, received = received[: self._ingest.batch_max], received[self._ingest.batch_max :]
            while batch:
                try:
                    acks = self._ingestor.handle([UpMessage(d.topic, d.payload) for d in batch])
                except StorageError as exc:
                    event(log, "store failed; batch not acked, retrying", level=logging.ERROR, error=str(exc))
                    if self._pause(connection, self._ingest.retry_s):
                        return
                    continue
                out = [publish_packet(ack_topic(ack.device), ack.payload()) for ack in acks]
                out += [puback_packet(d.packet_id) for d in batch if d.qos]
                connection.send(b"".join(out))
                self.processed += len(batch)
                batch = []

    def _fill(self, connection: Subscription, received: list[Delivery]) -> list[Delivery]:
        """``received`` topped up: a first message waited for up to ``_POLL_S``, then ``batch_wait_ms`` for more."""
        if not received:
            received = connection.receive(_POLL_S)
            if not received:
                return received
        deadline = time.monotonic() + self._ingest.batch_wait_ms / 1000
        while len(received) < self._ingest.batch_max and (remaining := deadline - time.monotonic()) > 0:
            received += connection.receive(remaining)
        return received

    def _pause(self, connection: Subscription, seconds: float) -> bool:
        """Wait ``seconds`` keeping the connection alive; whether ``stop`` was set meanwhile."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(remaining, self._config.keepalive_s / 4)):
                return True
            connection.keep_alive()
        return self._stop.is_set()

"""The sync service: feeds the outbox from the receipt book, sends it to the relay, settles it on the relay's acks.

One thread owns the link and its own connection to ``edge.db``. Each turn it

* copies new receipts and settlements into the outbox (:func:`edge.outbox.feed`), queues a health report
  (outbox depth, drop counters, link state) every ``health_interval_s``, and prunes acknowledged items;
* when ``[sync] url`` is set: connects if it is not connected (MQTT v5, clean start off, session expiry, last
  will ``offline`` on the retained presence topic; a failure waits a full-jitter backoff, so a box that boots
  without a network simply keeps trying), subscribes to its ack and command topics, publishes ``online``;
* reads what arrived (first, so that acks the broker kept in our session settle items before they would be
  resent): an ack marks the ids the relay stored ``done`` (and permanent rejections ``rejected``) in one
  transaction; a command ``btt/v1/dev/{device}/cmd/<name>`` goes to the handler registered for ``<name>``
  (``commands``; its exceptions are logged, never raised);
* sends pending items in send order as batches, keeping at most ``max_inflight`` messages unacknowledged; the
  certificate and each settlement go alone, after everything before them is acknowledged (the relay needs the
  certificate before the receipts it vouches for, and a settlement's receipts before the settlement).

A message not acknowledged within ``ack_timeout_s``, and every message in flight when the link drops, is sent
again; the relay de-duplicates on the item id. Without a URL (``btt-edge run`` without ``--mqtt``) everything
stays queued offline until one is configured.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge import __version__
from edge.config import SyncConfig
from edge.db import DB_FILENAME, connect
from edge.errors import AckError, ConfigError, LinkError, LinkRefused
from edge.outbox.feed import FEED_BATCH, feed
from edge.outbox.kinds import BARRIERS
from edge.outbox.outbox import Item, Outbox
from edge.receipts.book import ReceiptBook
from edge.sync.link import Inbound, LinkSettings, MqttLink, link_settings
from edge.sync.paho_link import PahoLink
from edge.sync.protocol import batches, decode_ack, encode_up
from protocol.clock import now_ms
from protocol.topics import OFFLINE, ONLINE, ack_topic, command_name, commands_filter, presence_topic, up_topic
from runtime.backoff import Backoff
from runtime.logs import event

__all__ = ["SyncService"]

log = logging.getLogger("edge.sync")

_POLL_S = 0.1
_PRUNE_INTERVAL_S = 3600.0
_KEPT_ACKS_S = 1.0
"""After each (re)connect the service only reads for this long before sending: the broker hands over the acks it
kept in our session right after the connection, and an item they settle need not be sent again."""


@dataclass
class _Flight:
    """One up message awaiting the relay's ack: its items (id -> outbox row), when to give up waiting, and
    whether it is a barrier (nothing else is sent while it is in flight)."""

    items: dict[str, int]
    deadline: float
    barrier: bool


@dataclass
class _Counters:
    """What the link has done since the agent started (reported in every health report)."""

    connects: int = 0
    sent_messages: int = 0
    acked_items: int = 0
    ack_timeouts: int = 0
    bad_acks: int = 0
    started: float = field(default_factory=time.monotonic)


class SyncService:
    """Runs the outbox feed and the MQTT link in one thread (see the module docstring).

    ``config`` is the ``[sync]`` section; ``feed_interval_s`` is ``[outbox] feed_interval_s`` and ``device_id``
    ``[receipts] device_id`` (the book's provisioned identity comes first). ``commands`` maps a command name to a
    handler taking the payload; it runs on the sync thread, so it should only wake its component (e.g.
    ``{"ota-available": ota.wake}``).
    """

    name = "sync"

    def __init__(
        self,
        config: SyncConfig,
        data_dir: Path,
        outbox: Outbox,
        book: ReceiptBook | None,
        *,
        feed_interval_s: float,
        device_id: str = "",
        link_factory: Callable[[LinkSettings], MqttLink] = PahoLink,
        rand: Callable[[], float] = random.random,
        commands: Mapping[str, Callable[[bytes], None]] | None = None,
    ) -> None:
        self._cfg = config
        self._db_path = data_dir / DB_FILENAME
        self._feed_interval_s = feed_interval_s
        self._configured_device = device_id
        self._commands = dict(commands or {})
        self._outbox = outbox
        self._book = book
        self._link_factory = link_factory
        self._backoff = Backoff(self._cfg.backoff_initial_s, self._cfg.backoff_max_s, rand)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: MqttLink | None = None
        self._device: str | None = None
        self._awaiting_device = False
        self._flights: dict[int, _Flight] = {}
        self._item_flight: dict[str, int] = {}
        self._next_flight = 0
        self._next_attempt = 0.0
        self._send_after = 0.0
        self._next_feed = 0.0
        self._next_health = 0.0
        self._next_prune = 0.0
        self.counters = _Counters()

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread. Never fails for a sync problem (safety first: the agent's clinical work runs on);
        an unusable ``[sync]`` setting is logged as an error and the box queues offline."""
        if not self._cfg.url:
            event(log, "no broker configured ([sync] url, --mqtt): queuing offline")
        elif not self._make_link():
            self._awaiting_device = True
            event(log, "no device id yet (not provisioned): queuing offline until it is", level=logging.WARNING)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _make_link(self) -> bool:
        """Create the link once the device id is known (at start, or when the box is provisioned while the agent
        runs); False while it is not. Unusable settings are logged once and leave the box queuing offline."""
        self._device = self._device_id()
        if self._device is None:
            return False
        try:
            self._link = self._link_factory(link_settings(self._cfg, self._device))
        except ConfigError as exc:
            event(log, "sync settings unusable: queuing offline", level=logging.ERROR, error=str(exc))
        return True

    def _device_id(self) -> str | None:
        identity = self._book.identity if self._book is not None else None
        if identity is not None:
            return identity.device_id
        return self._configured_device or None

    def _run(self) -> None:
        conn = connect(self._db_path)
        try:
            while not self._stop.is_set():
                try:
                    self._turn(conn)
                except Exception:
                    log.exception("sync turn failed; retrying")
                    self._stop.wait(1.0)
        finally:
            self._close_link()
            conn.close()

    def _close_link(self) -> None:
        if self._link is not None and self._link.connected and self._device is not None:
            with contextlib.suppress(LinkError):
                self._link.publish(presence_topic(self._device), OFFLINE, retain=True)
            self._link.disconnect()
            event(log, "disconnected from broker")

    # --- one turn ---------------------------------------------------------------------------------------

    def _turn(self, conn: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now >= self._next_feed:
            self._next_feed = now + self._feed_interval_s
            if self._book is not None:
                queued = feed(self._outbox, conn, self._book)
                if queued >= FEED_BATCH:  # a backlog: copy the next batch on the next turn
                    self._next_feed = now
        if now >= self._next_health:
            self._next_health = now + self._cfg.health_interval_s
            self._outbox.enqueue(conn, "health", self.health(conn))
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_INTERVAL_S
            self._outbox.prune(conn)
        if self._awaiting_device and self._make_link():
            self._awaiting_device = False
        link = self._link
        if link is None:
            self._stop.wait(_POLL_S)
            return
        if not link.connected:
            if now < self._next_attempt:
                self._stop.wait(min(_POLL_S, self._next_attempt - now))
                return
            try:
                self._open(link)
            except LinkError as exc:
                self._link_failed(link, exc, "cannot reach broker")
                return
        try:
            # read first: right after a reconnect the broker hands over the acks it kept in our session, so
            # what the relay already stored is settled instead of sent again
            for message in link.poll(_POLL_S):
                self._receive(conn, message)
            self._expire(time.monotonic())
            if time.monotonic() >= self._send_after:
                self._send(conn, link)
        except LinkError as exc:
            self._link_failed(link, exc, "link to broker lost")

    def _open(self, link: MqttLink) -> None:
        assert self._device is not None
        link.connect()
        link.subscribe(ack_topic(self._device))
        link.subscribe(commands_filter(self._device))
        link.publish(presence_topic(self._device), ONLINE, retain=True)
        self._backoff.reset()
        self._release(list(self._item_flight))
        self._send_after = time.monotonic() + _KEPT_ACKS_S
        self.counters.connects += 1
        event(log, "connected to broker", device=self._device, url=self._cfg.url.split("@")[-1])

    def _link_failed(self, link: MqttLink, exc: LinkError, what: str) -> None:
        link.disconnect()  # e.g. connected but the subscription failed: start over cleanly
        delay = self._backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        self._release(list(self._item_flight))
        level = logging.ERROR if isinstance(exc, LinkRefused) else logging.WARNING
        event(log, what, level=level, error=str(exc), attempt=self._backoff.attempt, retry_in_s=round(delay, 2))

    # --- sending and acks -------------------------------------------------------------------------------

    def _send(self, conn: sqlite3.Connection, link: MqttLink) -> None:
        assert self._device is not None
        free = self._cfg.max_inflight - len(self._flights)
        if free <= 0 or any(f.barrier for f in self._flights.values()):
            return
        busy = {row for flight in self._flights.values() for row in flight.items.values()}
        items = self._outbox.pending(conn, free * self._cfg.batch_max_items, skip=busy)
        for batch in batches(self._device, items, self._cfg.batch_max_items, self._cfg.batch_max_bytes)[:free]:
            kind = batch[0].kind
            barrier = kind in BARRIERS  # alone, once all before it is acked (edge.outbox.kinds)
            if barrier and self._flights:
                return
            link.publish(up_topic(self._device, kind), encode_up(self._device, kind, batch))
            self._track(batch, barrier)
            if barrier:
                return

    def _track(self, batch: list[Item], barrier: bool) -> None:
        key = self._next_flight
        self._next_flight += 1
        deadline = time.monotonic() + self._cfg.ack_timeout_s
        self._flights[key] = _Flight({i.item: i.row for i in batch}, deadline, barrier)
        for i in batch:
            self._item_flight[i.item] = key
        self.counters.sent_messages += 1

    def _release(self, items: Iterable[str]) -> None:
        """Forget ``items`` as in flight (acked, rejected for good, or to be sent again)."""
        for item in items:
            key = self._item_flight.pop(item, None)
            if key is None:
                continue
            flight = self._flights[key]
            del flight.items[item]
            if not flight.items:
                del self._flights[key]

    def _expire(self, now: float) -> None:
        late = [item for f in self._flights.values() if f.deadline <= now for item in f.items]
        if late:
            self.counters.ack_timeouts += 1
            event(log, "no ack from relay in time; will resend", level=logging.WARNING, items=len(late))
            self._release(late)

    def _receive(self, conn: sqlite3.Connection, message: Inbound) -> None:
        assert self._device is not None
        if message.topic == ack_topic(self._device):
            try:
                ack = decode_ack(message.payload)
            except AckError as exc:
                self.counters.bad_acks += 1
                event(log, "ignored an ack", level=logging.WARNING, error=str(exc))
                return
            settled = self._outbox.settle(conn, ack.stored, ack.rejected)
            self._release([*ack.stored, *(r.item for r in ack.rejected if r.permanent)])
            self.counters.acked_items += settled.done
            for rejection in ack.rejected:
                level = logging.ERROR if rejection.permanent else logging.WARNING
                event(log, "relay rejected an item", level=level, item=rejection.item, reason=rejection.reason)
            return
        name = command_name(self._device, message.topic)
        if name is None:
            return
        handler = self._commands.get(name)
        if handler is None:
            event(log, "unknown command ignored", level=logging.WARNING, command=name)
            return
        event(log, "command received", command=name, bytes=len(message.payload))
        try:
            handler(message.payload)
        except Exception:
            log.exception("command %s failed", name)

    # --- reporting --------------------------------------------------------------------------------------

    def health(self, conn: sqlite3.Connection) -> dict[str, object]:
        """The health report queued every ``health_interval_s`` (no patient data: counts and states only)."""
        c = self.counters
        return {
            "time_ms": now_ms(),
            "agent_version": __version__,
            "uptime_s": int(time.monotonic() - c.started),
            "link": {
                "configured": self._link is not None,
                "connected": self._link is not None and self._link.connected,
                "connects": c.connects,
                "sent_messages": c.sent_messages,
                "acked_items": c.acked_items,
                "ack_timeouts": c.ack_timeouts,
                "bad_acks": c.bad_acks,
            },
            "outbox": self._outbox.stats(conn),
        }

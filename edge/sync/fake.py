"""An in-memory broker and :class:`~edge.sync.link.MqttLink` for unit tests (the real peer is Mosquitto).

:class:`FakeBroker` routes QoS 1 messages between :class:`FakeLink` clients by topic filter (``+``/``#``),
keeps retained messages, keeps a persistent session's subscriptions and queued messages while its client is
away (clean start off), publishes a client's last will when it drops without DISCONNECT, and can be taken
``down`` (connects fail, connected links drop). Every message published is recorded in ``published``. It is
thread-safe, so a test can play the relay while the service runs in its thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edge.errors import LinkError
from edge.sync.link import Inbound, LinkSettings

__all__ = ["FakeBroker", "FakeLink", "topic_matches"]


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching with ``+`` (one level) and ``#`` (the rest)."""
    parts, levels = pattern.split("/"), topic.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part not in ("+", levels[i])):
            return False
    return len(parts) == len(levels)


@dataclass
class _Session:
    filters: set[str] = field(default_factory=set)
    queue: list[Inbound] = field(default_factory=list)
    link: FakeLink | None = None


class FakeBroker:
    """Routes messages between fake links; ``down = True`` simulates an outage."""

    def __init__(self) -> None:
        self.down = False
        self.published: list[tuple[str, str, bytes]] = []
        """(client id, topic, payload) of every message any client published."""
        self.retained: dict[str, bytes] = {}
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.RLock()

    def link(self, settings: LinkSettings) -> FakeLink:
        """A link factory with the signature of :class:`~edge.sync.paho_link.PahoLink`."""
        return FakeLink(self, settings)

    def route(self, client_id: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish as ``client_id`` (also how a test plays the relay)."""
        with self._lock:
            self.published.append((client_id, topic, payload))
            if retain:
                self.retained[topic] = payload
            for session in self._sessions.values():
                if any(topic_matches(f, topic) for f in session.filters):
                    session.queue.append(Inbound(topic, payload))

    def set_down(self, down: bool) -> None:
        """Take the broker down (every link drops, its last will goes out) or bring it back."""
        with self._lock:
            self.down = down
            if down:
                for session in list(self._sessions.values()):
                    if session.link is not None:
                        session.link.drop()

    def _attach(self, link: FakeLink) -> _Session:
        with self._lock:
            if self.down:
                raise LinkError("connection refused (fake broker down)")
            session = self._sessions.setdefault(link.settings.client_id, _Session())
            if session.link is not None and session.link is not link:
                session.link.drop()
            session.link = link
            return session

    def _detach(self, link: FakeLink, *, will: bool) -> None:
        with self._lock:
            session = self._sessions.get(link.settings.client_id)
            if session is not None and session.link is link:
                session.link = None
                if will and link.settings.will_topic:
                    s = link.settings
                    self.route(s.client_id, s.will_topic, s.will_payload, retain=True)


class FakeLink:
    """A client of :class:`FakeBroker`; behaves like :class:`~edge.sync.paho_link.PahoLink`."""

    def __init__(self, broker: FakeBroker, settings: LinkSettings) -> None:
        self.broker = broker
        self.settings = settings
        self._session: _Session | None = None

    @property
    def connected(self) -> bool:
        return self._session is not None

    def connect(self) -> None:
        self._session = self.broker._attach(self)

    def subscribe(self, topic: str) -> None:
        with self.broker._lock:
            self._require().filters.add(topic)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._require()
        self.broker.route(self.settings.client_id, topic, payload, retain=retain)

    def poll(self, timeout: float) -> list[Inbound]:
        if not self._require().queue:
            time.sleep(timeout)
        with self.broker._lock:
            session = self._require()
            inbox, session.queue[:] = list(session.queue), []
        return inbox

    def disconnect(self) -> None:
        if self._session is not None:
            self._session = None
            self.broker._detach(self, will=False)

    def drop(self) -> None:
        """The connection breaks (the broker sends the last will)."""
        if self._session is not None:
            self._session = None
            self.broker._detach(self, will=True)

    def _require(self) -> _Session:
        if self._session is None:
            raise LinkError("not connected")
        return self._session

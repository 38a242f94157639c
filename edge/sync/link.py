"""The MQTT link as the sync service sees it: a small interface, its settings, and what arrives.

:class:`MqttLink` is implemented by :class:`edge.sync.paho_link.PahoLink` (paho-mqtt, MQTT v5) and by the
in-memory :class:`edge.sync.fake.FakeLink` for unit tests. A link is driven from ONE thread: ``connect``,
then ``publish``/``subscribe`` and ``poll`` (which does the network I/O and returns what arrived), and
``disconnect``. Every failure is a :class:`~edge.errors.LinkError` (``LinkRefused`` when the broker said no).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from edge.config import SyncConfig
from edge.errors import ConfigError
from protocol.topics import OFFLINE, presence_topic

__all__ = ["Inbound", "LinkSettings", "MqttLink", "link_settings"]


@dataclass(frozen=True)
class Inbound:
    """A message the broker delivered to us."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class LinkSettings:
    """Everything needed to open the connection (built from ``[sync]`` and the device id)."""

    host: str
    port: int
    client_id: str
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 60
    session_expiry_s: int = 604_800
    connect_timeout_s: float = 10.0
    will_topic: str = ""
    will_payload: bytes = OFFLINE


class MqttLink(Protocol):
    """One MQTT v5 session with the broker: QoS 1, clean start off, a last will."""

    @property
    def connected(self) -> bool: ...

    def connect(self) -> None:
        """Open the connection and wait for the broker's CONNACK; ``LinkError``/``LinkRefused`` on failure."""

    def subscribe(self, topic: str) -> None:
        """Subscribe to ``topic`` at QoS 1."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue ``payload`` at QoS 1; ``LinkError`` when not connected."""

    def poll(self, timeout: float) -> list[Inbound]:
        """Do network I/O for up to ``timeout`` seconds; the messages that arrived. ``LinkError`` if it dropped."""

    def disconnect(self) -> None:
        """Send DISCONNECT (after what is queued) and close; never raises."""


def link_settings(cfg: SyncConfig, device_id: str) -> LinkSettings:
    """Settings for ``device_id`` from ``[sync]``: URL, credentials (URL user info wins), TLS files, last will."""
    url = urlsplit(cfg.url)
    tls = url.scheme == "mqtts"
    username = unquote(url.username) if url.username else (cfg.username or None)
    password = unquote(url.password) if url.password else None
    if password is None and cfg.password_file:
        try:
            password = Path(cfg.password_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"sync.password_file: cannot read a password from {cfg.password_file}") from exc
    if username is None and not cfg.cert_file:
        username = device_id
    return LinkSettings(
        host=url.hostname or "",
        port=url.port or (8883 if tls else 1883),
        client_id=device_id,
        tls=tls,
        username=username,
        password=password,
        ca_file=cfg.ca_file or None,
        cert_file=cfg.cert_file or None,
        key_file=cfg.key_file or None,
        keepalive_s=cfg.keepalive_s,
        session_expiry_s=cfg.session_expiry_s,
        connect_timeout_s=cfg.connect_timeout_s,
        will_topic=presence_topic(device_id),
    )

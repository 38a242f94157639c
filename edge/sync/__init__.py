"""The link to the cloud relay: MQTT v5 over paho-mqtt, application acks, reconnect with backoff."""

from edge.sync.fake import FakeBroker, FakeLink
from edge.sync.link import Inbound, LinkSettings, MqttLink, link_settings
from edge.sync.paho_link import PahoLink
from edge.sync.service import SyncService

__all__ = [
    "FakeBroker",
    "FakeLink",
    "Inbound",
    "LinkSettings",
    "MqttLink",
    "PahoLink",
    "SyncService",
    "link_settings",
]

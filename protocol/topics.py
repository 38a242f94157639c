"""Every MQTT topic of the contract (MQTT v5, QoS 1), built and parsed in one place.

``{device}`` is the device id, which the broker's ACL ties to the MQTT username::

    btt/v1/dev/{device}/up/{kind}   device -> relay: outbox items (kinds in protocol.kinds)
    btt/v1/dev/{device}/ack         relay -> device: application acknowledgement
    btt/v1/dev/{device}/cmd/{name}  relay -> device: commands (names in protocol.kinds)
    btt/v1/dev/{device}/presence    retained "online" on connect; the last will sets "offline"

The relay's workers read up topics through MQTT v5 shared subscriptions (``$share/{group}/{filter}``), one group
per consumer, so each message reaches one worker of the group.
"""

from __future__ import annotations

import re

__all__ = [
    "DEVICE_ID",
    "OFFLINE",
    "ONLINE",
    "PREFIX",
    "UP_FILTER",
    "ack_topic",
    "command_name",
    "command_topic",
    "commands_filter",
    "parse_up_topic",
    "presence_topic",
    "shared",
    "up_filter",
    "up_topic",
]

PREFIX = "btt/v1/dev"
ONLINE = b"online"
OFFLINE = b"offline"
DEVICE_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
"""A device id as topics and URLs carry it: an identifier without ``/`` (one topic level, one path segment)."""
UP_FILTER = f"{PREFIX}/+/up/#"
"""Every up message of every device."""
_UP_TOPIC_RE = re.compile(rf"^{PREFIX}/({DEVICE_ID})/up/([a-z]{{1,32}})$")


def up_topic(device: str, kind: str) -> str:
    """Where ``device`` publishes items of ``kind``."""
    return f"{PREFIX}/{device}/up/{kind}"


def up_filter(kind: str) -> str:
    """The filter that matches every device's up messages of ``kind``."""
    return f"{PREFIX}/+/up/{kind}"


def parse_up_topic(topic: str) -> tuple[str, str] | None:
    """``(device, kind)`` of an up topic (a device id of :data:`DEVICE_ID`'s form, 1-32 lower-case letters of
    kind), or None."""
    match = _UP_TOPIC_RE.match(topic)
    return None if match is None else (match[1], match[2])


def ack_topic(device: str) -> str:
    """Where the relay acknowledges ``device``'s items."""
    return f"{PREFIX}/{device}/ack"


def command_topic(device: str, name: str) -> str:
    """Where the relay sends ``device`` the command ``name``."""
    return f"{PREFIX}/{device}/cmd/{name}"


def commands_filter(device: str) -> str:
    """The filter that matches every command to ``device``."""
    return f"{PREFIX}/{device}/cmd/#"


def command_name(device: str, topic: str) -> str | None:
    """The command name of a topic under ``commands_filter(device)``; None for any other topic."""
    prefix = f"{PREFIX}/{device}/cmd/"
    return topic[len(prefix) :] if topic.startswith(prefix) and len(topic) > len(prefix) else None


def presence_topic(device: str) -> str:
    """``device``'s retained presence (:data:`ONLINE` / :data:`OFFLINE`)."""
    return f"{PREFIX}/{device}/presence"


def shared(group: str, topic_filter: str) -> str:
    """``topic_filter`` as an MQTT v5 shared subscription of ``group``."""
    return f"$share/{group}/{topic_filter}"

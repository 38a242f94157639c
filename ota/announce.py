"""Staged rollout at the relay: announce a bundle only to the devices its signed rollout policy reaches.

The relay does not send ``ota-available`` by itself, so this is the hook an operator (or a relay cron job) runs:
:func:`select_devices` (pure) applies :func:`ota.rollout.in_rollout` to a device list, :func:`announce`
publishes ``btt/v1/dev/{device}/cmd/ota-available`` (QoS 1, JSON ``{"v": 1, "model_id", "version"}``) with the
relay's broker credentials (its ACL may write ``cmd/#``). Devices re-check the signed policy themselves, so an
announcement to the wrong device installs nothing.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from ota.errors import PublishError
from ota.rollout import RolloutPolicy, in_rollout
from protocol.kinds import OTA_AVAILABLE
from protocol.topics import command_topic

__all__ = ["announce", "parse_devices", "select_devices"]

_TIMEOUT_S = 10.0


def parse_devices(text: str) -> dict[str, tuple[str, ...]]:
    """A device list, one device a line: ``device-id[ group ...]`` (``#`` starts a comment)."""
    devices: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            devices[fields[0]] = tuple(fields[1:])
    return devices


def select_devices(devices: Mapping[str, Iterable[str]], policy: RolloutPolicy) -> list[str]:
    """The devices ``policy`` reaches, sorted."""
    return sorted(device for device, groups in devices.items() if in_rollout(device, groups, policy))


def announce(url: str, devices: Sequence[str], model_id: str, version: str, *, ca_file: str = "") -> int:
    """Publish ``ota-available`` to each of ``devices`` through the broker at ``url``
    (``mqtt[s]://user:password@host:port``); returns how many the broker acknowledged."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise PublishError(f"{url!r} is not mqtt[s]://user:password@host:port")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if parts.username:
        client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
    if parts.scheme == "mqtts":
        client.tls_set(ca_certs=ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
    payload = json.dumps({"v": 1, "model_id": model_id, "version": version})
    try:
        client.connect(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883))
        client.loop_start()
        infos = [client.publish(command_topic(device, OTA_AVAILABLE), payload, qos=1) for device in devices]
        for info in infos:
            info.wait_for_publish(_TIMEOUT_S)
        done = sum(1 for info in infos if info.is_published())
    except (OSError, ValueError, RuntimeError) as exc:
        raise PublishError(f"cannot announce through {parts.hostname}: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()
    return done

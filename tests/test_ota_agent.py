"""The whole agent on a real broker: the relay's ``ota-available`` command makes the box check the repository;
a bundle failing its health check is reported to the relay and never activated, a good one is switched in at
the pipeline's next idle moment; ``btt-ota announce`` tells only the devices a bundle's rollout reaches."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from models.bundle import load_bundle
from ota.cli import main as btt_ota
from ota.rollout import RolloutPolicy
from ota.slots import FACTORY, SlotStore
from tests.conftest import StartAgent, wait_until
from tests.mqtt_broker import RELAY_USER, MosquittoBroker, StubRelay
from tests.ota_helpers import bundle_dir, new_repository, publish_bundle, serve
from tests.receipts_helpers import make_box

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_relay_announcement_health_report_and_idle_switch(start_agent: StartAgent, tmp_path: Path) -> None:
    box = make_box(tmp_path / "data")
    box.conn.close()
    device = box.identity.device_id
    factory = bundle_dir(tmp_path / "bundles", "1.0.0")
    repo = new_repository(tmp_path)
    broker = MosquittoBroker(tmp_path / "broker", users={device: "pw", RELAY_USER: "relay-pw"})
    broker.start()
    relay = StubRelay(broker, "relay-pw")
    slots = SlotStore(box.data_dir / "ota", factory)

    def announce() -> None:
        relay.client.publish(f"btt/v1/dev/{device}/cmd/ota-available", json.dumps({"v": 1}), qos=1)

    def ota_reports() -> list[dict[str, Any]]:
        return [relay.stored[i]["ota"] for i in sorted(relay.ids("health:")) if "ota" in relay.stored[i]]

    try:
        with serve(repo.directory) as server:
            agent = start_agent(
                box.data_dir,
                args=["--mqtt", broker.url(device, "pw")],
                env={
                    "BTT_EDGE_PIPELINE_BUNDLE_PATH": str(factory),
                    "BTT_EDGE_PIPELINE_BACKEND": "onnxruntime-cpu",
                    "BTT_EDGE_PIPELINE_POLL_INTERVAL_S": "0.1",
                    "BTT_EDGE_OTA_REPOSITORY_URL": server.url,
                    "BTT_EDGE_OTA_TRUSTED_ROOT": str(repo.metadata_dir / "1.root.json"),
                    "BTT_EDGE_OTA_CHECK_INTERVAL_S": "3600",
                    "BTT_EDGE_OUTBOX_FEED_INTERVAL_S": "0.1",
                },
            )
            wait_until(lambda: relay.presence.get(device) == b"online", 30, "the box online")
            publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.1.0", bad_golden=True))
            time.sleep(0.5)  # the box's subscription to its commands is in place once it is online
            announce()
            wait_until(lambda: any(r["event"] == "health_check_failed" for r in ota_reports()), 60, "failure report")
            assert slots.read().active == FACTORY
            publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.2.0"))
            announce()
            wait_until(lambda: slots.read().active != FACTORY, 60, "the good bundle switched in")
            assert load_bundle(slots.path(slots.read().active)).manifest.version == "1.2.0"
            assert agent.terminate() == 0
    finally:
        relay.close()
        broker.stop()


def test_announce_reaches_only_the_devices_of_the_rollout(tmp_path: Path) -> None:
    repo = new_repository(tmp_path)
    publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.1.0"), rollout=RolloutPolicy(percent=0, groups=("pilot",)))
    devices = tmp_path / "devices.txt"
    devices.write_text("dev-a pilot  # the pilot clinic\ndev-b\n", encoding="utf-8")
    broker = MosquittoBroker(tmp_path / "broker", users={"dev-a": "pa", "dev-b": "pb", RELAY_USER: "relay-pw"})
    broker.start()
    received: dict[str, list[bytes]] = {"dev-a": [], "dev-b": []}
    clients = []
    try:
        for device, password in (("dev-a", "pa"), ("dev-b", "pb")):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
            client.username_pw_set(device, password)
            client.on_message = lambda _c, _u, msg, device=device: received[device].append(bytes(msg.payload))
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            wait_until(client.is_connected, 10, f"{device} connected")
            client.subscribe(f"btt/v1/dev/{device}/cmd/#", qos=1)
            clients.append(client)
        time.sleep(0.3)
        url = broker.url(RELAY_USER, "relay-pw")
        args = ["announce", "tiny-test-model", "--repo", str(repo.directory), "--mqtt", url, "--devices", str(devices)]
        assert btt_ota(args) == 0
        wait_until(lambda: received["dev-a"], 10, "the pilot device told")
        time.sleep(0.3)
        assert received["dev-b"] == []
        assert json.loads(received["dev-a"][0]) == {"v": 1, "model_id": "tiny-test-model", "version": "1.1.0"}
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()

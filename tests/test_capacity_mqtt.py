"""Spare capacity end to end on a real Mosquitto: two boxes offer, the relay dispatches, one box vanishes mid-job,
the job is reassigned and paid to the box that delivered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloud_relay.capacity import CapacityLink, Coordinator
from cloud_relay.capacity.market import Requirements
from cloud_relay.config import MqttConfig
from cloud_relay.storage import open_database
from edge.capacity import CapacityService
from edge.capacity.fetch import DirectoryFetcher
from edge.config import AgentConfig, AgentSection, CapacityConfig, SyncConfig
from edge.outbox import Outbox
from edge.sync import SyncService
from protocol.keys import generate_key
from tests.conftest import wait_until
from tests.mqtt_broker import RELAY_USER, MosquittoBroker, StubRelay
from tests.receipts_helpers import Box
from tests.relay_helpers import provisioned
from tests.test_capacity import Activity, _accelerator, _batch, _blob, _bundle_tar

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Device:
    def __init__(self, box: Box, url: str, relay_key: str, blobs: Path, price: int) -> None:
        self.box = box
        self.config = AgentConfig(
            agent=AgentSection(data_dir=box.data_dir),
            sync=SyncConfig(url=url, backoff_initial_s=0.2, backoff_max_s=0.5, ack_timeout_s=5.0),
            capacity=CapacityConfig(
                enabled=True, relay_key=relay_key, opening_hours=(), idle_minutes=0.0, max_load=64.0,
                price_per_item_micro=price, resume_after_s=0.3,
            ),
        )  # fmt: skip
        outbox = Outbox.open(self.config)
        self.capacity = CapacityService(
            self.config.capacity, self.config.agent.data_dir, box.book, outbox, Activity(),
            fetcher=DirectoryFetcher(blobs), accelerator=_accelerator, score=lambda: 1000,
        )  # fmt: skip
        self.sync = SyncService(
            self.config.sync,
            self.config.agent.data_dir,
            outbox,
            box.book,
            feed_interval_s=self.config.outbox.feed_interval_s,
            commands={"capacity-job": self.capacity.submit},
        )

    def start(self) -> None:
        self.capacity.start()
        self.sync.start()

    def vanish(self) -> None:
        """The box drops off the network mid-job (link first, so nothing more reaches the relay)."""
        self.sync.stop()
        self.capacity.stop()

    def job_state(self) -> str | None:
        row = self.box.conn.execute("SELECT state FROM capacity_jobs ORDER BY updated_ms DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])


def test_device_vanishing_mid_job_on_real_broker(tmp_path: Path) -> None:
    db = open_database(str(tmp_path / "relay.db"))
    manufacturer, relay_key = generate_key(), generate_key()
    boxes = [
        provisioned(db, tmp_path / "a", manufacturer),
        provisioned(db, tmp_path / "b", manufacturer, clinic=None),
    ]
    ids = [b.identity.device_id for b in boxes]
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    broker = MosquittoBroker(tmp_path / "broker", users={ids[0]: "pa", ids[1]: "pb", RELAY_USER: "pr"})
    broker.start()
    stub: StubRelay | None = None
    link: CapacityLink | None = None
    devices: list[Device] = []
    try:
        stub = StubRelay(broker, "pr")  # the relay's consumer: stores and acks the outbox items
        coordinator = Coordinator(db, relay_key, job_timeout_s=8, spot_check_fraction=0.0)
        link = CapacityLink(MqttConfig.from_url(broker.url(RELAY_USER, "pr"), client_id="relay-cap"), coordinator,
                            tick_s=0.2)  # fmt: skip
        link.start()
        assert link.wait_connected(20), broker.log()
        devices = [
            Device(boxes[0], broker.url(ids[0], "pa"), relay_key.public.key.hex(), blobs, price=5),
            Device(boxes[1], broker.url(ids[1], "pb"), relay_key.public.key.hex(), blobs, price=50),
        ]
        for device in devices:
            device.start()
        wait_until(lambda: len(coordinator.offers()) == 2, 60, "both offers at the relay")
        bundle, batch = _blob(blobs, _bundle_tar()), _blob(blobs, _batch(2))
        job_id = coordinator.submit("clinic-a", bundle, batch, Requirements(2), spot_check=False)
        wait_until(lambda: devices[0].job_state() == "running", 60, "the cheaper box to run the job")
        devices[0].vanish()

        def assignments() -> dict[str, Any]:
            return {a["device"]: a["state"] for a in coordinator.job(job_id)["assignments"]}

        wait_until(lambda: coordinator.job(job_id)["state"] == "done", 180, f"the job done ({assignments()})")
        states = assignments()
        assert states[ids[0]] == "timeout"
        assert states[ids[1]] == "done"
        [payout] = coordinator.payouts()
        assert payout["device"] == ids[1]
        assert len(coordinator.job(job_id)["outputs"]) == 2

        # the payout names the compute receipts the box signed; they reached the relay through its outbox
        def receipts() -> dict[int, str]:
            items = stub.stored.items()
            return {b["signed"]["seq"]: b["signed"]["kind"] for i, b in items if i.startswith("receipt:")}

        wait_until(lambda: set(payout["receipts"]) <= set(receipts()), 30, "the compute receipts at the relay")
        assert sorted(receipts()[seq] for seq in payout["receipts"]) == ["compute", "compute-seconds"]
        assert any(json.dumps(body).find("capacity-result") > 0 for body in stub.stored.values())
    finally:
        for device in devices[1:]:
            device.vanish()
        if link is not None:
            link.stop()
        if stub is not None:
            stub.close()
        broker.stop()
        db.close()

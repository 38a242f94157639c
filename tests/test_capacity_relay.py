"""The relay's capacity coordinator: offers, expiry, matching, reassignment, verification, payouts, the API."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_relay.api import create_app
from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.capacity.market import Offer, Requirements, match, spot_checked
from cloud_relay.errors import Rejected, RelayError
from cloud_relay.ledger import Ledger
from cloud_relay.messages import ReportIn, parse_up
from cloud_relay.registry import Registry
from cloud_relay.storage import Database
from edge.capacity.fetch import BlobCache, DirectoryFetcher, HttpFetcher
from edge.errors import JobRejected
from protocol.capacity import JOB, OFFER, RESULT, WITHDRAW, sign, verify
from protocol.errors import ProtocolError
from protocol.keys import PrivateKey, generate_key
from tests.conftest import free_port, wait_until
from tests.receipts_helpers import Box
from tests.relay_helpers import (
    ARBITRARY_JSON,
    BACKENDS,
    dumps_any,
    offer_envelope,
    provisioned,
    result_envelope,
    throwaway_db,
)

T0 = 1_800_000_000_000
BUNDLE, BATCH = "b" * 64, "c" * 64


class Net:
    def __init__(self, db: Database, tmp_path: Path) -> None:
        manufacturer = generate_key()
        self.boxes = [
            provisioned(db, tmp_path / "a", manufacturer),
            provisioned(db, tmp_path / "b", manufacturer, clinic=None),
            provisioned(db, tmp_path / "c", manufacturer, clinic=None),
        ]
        self.now = T0
        self.relay = generate_key()
        self.coordinator = Coordinator(
            db, self.relay, job_timeout_s=60, spot_check_fraction=0.0, clock=lambda: self.now
        )

    def device(self, i: int) -> str:
        return self.boxes[i].identity.device_id

    def offer(self, i: int, price: int = 10, ttl_ms: int = 300_000) -> str:
        box = self.boxes[i]
        offer_id = f"offer-{i}-{self.now}"
        self.coordinator.handle(box.identity.device_id, offer_envelope(box, offer_id, self.now, price, ttl_ms))
        return offer_id

    def result(
        self,
        box: Box,
        job: dict[str, Any],
        outputs: list[list[int]],
        status: str = "done",
        key: PrivateKey | None = None,
    ) -> dict[str, Any]:
        return result_envelope(box, job, outputs, self.now, status, key)

    def box_of(self, device: str) -> Box:
        return next(b for b in self.boxes if b.identity.device_id == device)


@pytest.fixture(params=BACKENDS)
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Net]:
    with throwaway_db(request.param, tmp_path) as db:
        yield Net(db, tmp_path)


def _submit(net: Net, items: int = 2, spot: bool = False, **needs: Any) -> str:
    return net.coordinator.submit("clinic-a", BUNDLE, BATCH, Requirements(items, **needs), spot)


def test_job_dispatched_to_cheapest_signed_by_relay_and_paid_when_done(net: Net) -> None:
    net.offer(0, price=30)
    net.offer(1, price=10)
    job_id = _submit(net)
    [(device, job)] = net.coordinator.tick()
    assert device == net.device(1)
    assert verify(JOB, job, net.relay.public)["price_per_item_micro"] == 10
    assert net.coordinator.tick() == []  # dispatched once
    net.coordinator.handle(device, net.result(net.box_of(device), job, [[1, 2], [3, 4]]))
    state = net.coordinator.job(job_id, "clinic-a")
    assert state["state"] == "done"
    assert state["outputs"] == [[1, 2], [3, 4]]
    assert net.coordinator.payouts() == [
        {"job_id": job_id, "device": device, "items": 2, "amount_micro": 20, "receipts": [1, 2], "paid_ms": T0}
    ]


def test_offer_that_expires_gets_no_job(net: Net) -> None:
    net.offer(0, ttl_ms=1000)
    net.now += 2000
    job_id = _submit(net)
    assert net.coordinator.tick() == []
    assert net.coordinator.offers() == []
    assert net.coordinator.job(job_id)["state"] == "queued"
    net.offer(2)
    [(device, _)] = net.coordinator.tick()
    assert device == net.device(2)


def test_device_vanishing_mid_job_is_timed_out_and_job_reassigned(net: Net) -> None:
    net.offer(0, price=5)
    net.offer(1, price=50)
    job_id = _submit(net)
    [(first, first_job)] = net.coordinator.tick()
    assert first == net.device(0)
    net.now += 61_000  # the device said nothing within the job's deadline
    [(second, second_job)] = net.coordinator.tick()
    assert second == net.device(1)
    net.coordinator.handle(second, net.result(net.box_of(second), second_job, [[1], [2]]))
    # the vanished device comes back with its result: kept as late, not paid
    net.coordinator.handle(first, net.result(net.box_of(first), first_job, [[1], [2]]))
    states = {a["device"]: a["state"] for a in net.coordinator.job(job_id)["assignments"]}
    assert states == {first: "late", second: "done"}
    assert [p["device"] for p in net.coordinator.payouts()] == [second]


def test_withdrawal_or_preemption_gives_job_to_another_device(net: Net) -> None:
    offer_a = net.offer(0, price=5)
    net.offer(1, price=50)
    net.offer(2, price=60)
    _submit(net)
    [(first, _)] = net.coordinator.tick()
    box = net.box_of(first)
    fields = {"offer_id": offer_a, "device": first, "reason": "clinical work", "issued_ms": net.now}
    net.coordinator.handle(first, sign(WITHDRAW, fields, box.identity.key))
    [(second, job)] = net.coordinator.tick()
    assert second == net.device(1)
    net.coordinator.handle(second, net.result(net.box_of(second), job, [], status="preempted"))
    [(third, _)] = net.coordinator.tick()
    assert third == net.device(2)


def test_forged_and_tampered_results_are_rejected(net: Net) -> None:
    net.offer(0)
    job_id = _submit(net)
    [(device, job)] = net.coordinator.tick()
    box = net.box_of(device)
    with pytest.raises(Rejected, match="no certificate"):
        net.coordinator.handle(device, net.result(box, job, [[1], [2]], key=generate_key()))
    tampered = net.result(box, job, [[1], [2]])
    tampered["signed"]["outputs"] = [[9], [9]]
    with pytest.raises(Rejected, match="does not verify"):
        net.coordinator.handle(device, tampered)
    other = net.boxes[2]
    with pytest.raises(Rejected, match="was not given"):
        net.coordinator.handle(other.identity.device_id, net.result(other, job, [[1], [2]]))
    with pytest.raises(Rejected, match="no certificate"):  # another device's signed result, replayed as its own
        net.coordinator.handle(other.identity.device_id, net.result(box, job, [[1], [2]]))
    wrong = dict(job, signed={**job["signed"], "batch": "d" * 64})
    with pytest.raises(Rejected, match="batch"):
        net.coordinator.handle(device, net.result(box, wrong, [[1], [2]]))
    with pytest.raises(Rejected, match="outputs"):
        net.coordinator.handle(device, net.result(box, job, [[1]]))
    assert net.coordinator.job(job_id)["state"] == "queued"
    assert net.coordinator.payouts() == []


def test_spot_check_devices_disagreeing_dispute_the_job(net: Net) -> None:
    net.offer(0)
    net.offer(1)
    job_id = _submit(net, spot=True)
    dispatched = net.coordinator.tick()
    assert sorted(d for d, _ in dispatched) == sorted([net.device(0), net.device(1)])
    (d0, j0), (d1, j1) = dispatched
    net.coordinator.handle(d0, net.result(net.box_of(d0), j0, [[100, 200], [300, 400]]))
    assert net.coordinator.job(job_id)["state"] == "queued"  # waits for the second opinion
    net.coordinator.handle(d1, net.result(net.box_of(d1), j1, [[100, 200], [300, 90_000]]))
    state = net.coordinator.job(job_id)
    assert state["state"] == "disputed"
    assert "items [1]" in state["reason"]
    assert net.coordinator.payouts() == []


def test_spot_check_devices_agreeing_within_tolerance_are_both_paid(net: Net) -> None:
    net.offer(0)
    net.offer(1)
    job_id = _submit(net, spot=True)
    (d0, j0), (d1, j1) = net.coordinator.tick()
    net.coordinator.handle(d0, net.result(net.box_of(d0), j0, [[100, 200], [300, 400]]))
    net.coordinator.handle(d1, net.result(net.box_of(d1), j1, [[100, 250], [300, 400]]))
    assert net.coordinator.job(job_id)["state"] == "done"
    assert sorted(p["device"] for p in net.coordinator.payouts()) == sorted([d0, d1])


def _offer_id(offer: Offer | None) -> str | None:
    return None if offer is None else offer.offer_id


def test_matching_respects_requirements() -> None:
    offers = [
        Offer("o1", "d1", "cpu", 4096, 500, 16, 10, 1, 10_000),
        Offer("o2", "d2", "cuda", 16384, 90_000, 64, 40, 2, 10_000),
        Offer("o3", "d3", "cuda", 8192, 80_000, 64, 30, 3, 10_000, busy=True),
    ]
    assert _offer_id(match(offers, Requirements(8), 5)) == "o1"
    assert _offer_id(match(offers, Requirements(8, kinds=("cuda",)), 5)) == "o2"
    assert _offer_id(match(offers, Requirements(32), 5)) == "o2"
    assert match(offers, Requirements(8, min_memory_mb=32_000), 5) is None
    assert match(offers, Requirements(8, max_price_per_item_micro=5), 5) is None
    assert match(offers, Requirements(8), 20_000) is None
    assert _offer_id(match(offers, Requirements(8), 5, exclude=["d1"])) == "o2"
    share = sum(spot_checked(f"job-{i}", 0.1) for i in range(2000)) / 2000
    assert 0.07 < share < 0.13


def test_api_submits_job_and_serves_blobs(tmp_path: Path) -> None:
    with throwaway_db("sqlite", tmp_path) as db:
        registry = Registry(db)
        registry.add_clinic("clinic-a", "A")
        token = registry.add_token("clinic-a")
        client = TestClient(create_app(db, Ledger(db, operator="op")))
        auth = {"Authorization": f"Bearer {token}"}
        bundle = client.put("/v1/capacity/blobs", content=b"bundle bytes", headers=auth).json()["sha256"]
        assert bundle == hashlib.sha256(b"bundle bytes").hexdigest()
        batch = client.put("/v1/capacity/blobs", content=b"batch bytes", headers=auth).json()["sha256"]
        assert client.get(f"/v1/capacity/blobs/{batch}").content == b"batch bytes"  # devices: no token
        assert client.put("/v1/capacity/blobs", content=b"x").status_code == 401
        missing = client.post("/v1/capacity/jobs", json={"bundle": "e" * 64, "batch": batch, "items": 1}, headers=auth)
        assert missing.status_code == 422
        made = client.post("/v1/capacity/jobs", json={"bundle": bundle, "batch": batch, "items": 3}, headers=auth)
        assert made.status_code == 201
        job = client.get(f"/v1/capacity/jobs/{made.json()['job_id']}", headers=auth).json()
        assert job["state"] == "queued"
        assert job["items"] == 3
        registry.add_clinic("clinic-b", "B")
        other = {"Authorization": f"Bearer {registry.add_token('clinic-b')}"}
        assert client.get(f"/v1/capacity/jobs/{made.json()['job_id']}", headers=other).status_code == 404
        assert client.get("/v1/capacity/offers", headers=auth).json() == {"offers": []}


def test_device_fetches_job_blobs_from_relay_over_http(tmp_path: Path) -> None:
    """The device's HttpFetcher against the relay API served by uvicorn; a blob whose hash differs is refused."""
    with throwaway_db("sqlite", tmp_path) as db:
        registry = Registry(db)
        registry.add_clinic("clinic-a", "A")
        token = registry.add_token("clinic-a")
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(db, Ledger(db, operator="op")), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started, 20, "uvicorn to start")
            client = TestClient(create_app(db, Ledger(db, operator="op")))
            digest = client.put(
                "/v1/capacity/blobs", content=b"model bytes", headers={"Authorization": f"Bearer {token}"}
            ).json()["sha256"]
            cache = BlobCache(tmp_path / "cache", HttpFetcher(f"http://127.0.0.1:{port}/v1/capacity/blobs"))
            assert cache.get(digest, 1024).read_bytes() == b"model bytes"
            with pytest.raises(JobRejected, match="larger than"):
                HttpFetcher(f"http://127.0.0.1:{port}/v1/capacity/blobs").fetch(digest, 4)
            with pytest.raises(JobRejected, match="cannot fetch"):
                cache.get("f" * 64, 1024)  # not at the relay: 404
            (tmp_path / "fake").mkdir()
            forged = "0" * 64
            (tmp_path / "fake" / forged).write_bytes(b"something else")
            with pytest.raises(JobRejected, match="does not match"):
                BlobCache(tmp_path / "cache2", DirectoryFetcher(tmp_path / "fake")).get(forged, 1024)
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def _offers_message(device: str, bodies: list[Any]) -> bytes:
    items = [{"id": f"o{i}", "body": body} for i, body in enumerate(bodies)]
    return dumps_any({"v": 1, "device": device, "kind": "offers", "items": items})


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_arbitrary_capacity_messages_are_refused_never_raised(net: Net, data: st.DataObject) -> None:
    """What the capacity link hands the coordinator (after the boundary parser) is stored or refused: any other
    exception would end the relay process (cloud_relay.capacity.link)."""
    device, box = net.device(0), net.boxes[0]
    with net.coordinator.db.transaction() as tx:
        dispatched = tx.one("SELECT job_id FROM capacity_assignments WHERE device = ?", (device,))
    if dispatched is None:  # the first example: a job dispatched to device 0, for results to refer to
        net.offer(0)
        job_id = _submit(net)
        assert [d for d, _ in net.coordinator.tick()] == [device]
    else:
        job_id = str(dispatched[0])
    kind = data.draw(st.sampled_from([OFFER, WITHDRAW, RESULT, "other"]), label="kind")
    fields: dict[str, Any] = {
        "offer_id": "o-1", "device": device, "job_id": job_id, "status": "done", "bundle": BUNDLE, "batch": BATCH,
        "items": 2, "outputs": [[1, 2], [3, 4]], "receipts": [1], "accelerator": {"kind": "cpu", "memory_mb": 1},
        "score_mflops": 1, "max_items": 4, "price_per_item_micro": 1, "issued_ms": net.now, "expires_ms": net.now + 1,
    }  # fmt: skip
    field = data.draw(st.sampled_from([*fields, "type", "extra"]), label="field")
    fields[field] = data.draw(ARBITRARY_JSON, label="value")
    try:
        envelope: Any = sign(kind, fields, box.identity.key)
    except (ValueError, RecursionError, ProtocolError):  # not signable: send it with a signature that cannot match
        envelope = {"signed": {"type": kind, **fields}, "signatures": [{"alg": "ed25519", "keyid": "k", "sig": "00"}]}
    bodies = [envelope, data.draw(ARBITRARY_JSON, label="body")]
    try:
        payload = _offers_message(device, bodies)
    except (ValueError, RecursionError):
        return  # json.dumps itself cannot write it
    for item in parse_up(f"btt/v1/dev/{device}/up/offers", payload).items:
        assert isinstance(item, ReportIn)
        with contextlib.suppress(RelayError):
            net.coordinator.handle(device, item.body)

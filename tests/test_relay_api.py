"""The clinic API and the ledger on SQLite and PostgreSQL: token auth, isolation between clinics, proofs, payouts."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient

from cloud_relay.api import create_app
from cloud_relay.errors import RegistryError
from cloud_relay.ingest import Ingestor
from cloud_relay.ledger import Ledger, period_bounds
from cloud_relay.registry import ISSUER, Registry
from cloud_relay.storage import Database
from edge.db import transaction
from edge.receipts.grants import install_grant
from protocol.encoding import canonical_bytes
from protocol.keys import generate_key
from protocol.money import Money
from protocol.settlement import parse_settlement
from protocol.verify import Trust, verify_inclusion, verify_proof
from tests.receipts_helpers import Box, make_grant, make_shares
from tests.relay_helpers import provisioned, receipt_items, throwaway_db, up

BACKEND_PARAMS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.integration)]
NOV_2026 = period_bounds("2026-11")[0] + 86_400_000


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with throwaway_db(request.param, tmp_path) as database:
        yield database


class World:
    """Two clinics with one device each; clinic A's device has 5 settled and 1 unsettled receipt."""

    def __init__(self, db: Database, tmp_path: Path) -> None:
        manufacturer, self.issuer = generate_key(), generate_key()
        self.manufacturer = manufacturer
        self.a: Box = provisioned(db, tmp_path / "a", manufacturer, clinic="clinic-a")
        self.b: Box = provisioned(db, tmp_path / "b", manufacturer, clinic="clinic-b")
        registry = Registry(db)
        registry.add_trust_key(ISSUER, self.issuer.public)
        registry.add_device(self.a.identity.device_id, clinic="clinic-a", asset="asset-1")
        self.token_a = registry.add_token("clinic-a", "front desk")
        self.token_b = registry.add_token("clinic-b")
        for box in (self.a, self.b):
            box.book._clock = lambda: NOV_2026
        self.ledger = Ledger(db, operator="btt-operator")
        grant = make_grant(self.issuer, units=3)
        self.ledger.add_grant(grant)
        with transaction(self.a.conn):
            install_grant(self.a.conn, grant, {self.issuer.keyid: self.issuer.public}, "asset-1")
        self.ledger.add_share_table(make_shares(self.issuer, [("owner-x", 7000), ("owner-y", 3000)]))
        self.ledger.set_tariff("exposure", Money("CNY", 200))
        self.a.record(4)
        self.a.record(1, kind="exposure")
        settlement = self.a.book.close_batch(self.a.conn, 100)
        assert settlement is not None
        self.a.record(1)
        self.b.record(2)
        ingest = Ingestor(db)
        for box in (self.a, self.b):
            ingest.handle([up(box.identity.device_id, "receipts", receipt_items(box))])
        ingest.handle([up(self.a.identity.device_id, "settlements", [("s1", settlement)])])
        ingest.handle([up(self.a.identity.device_id, "offers", [("o1", {"gpu_ms_per_hour": 1000})])])
        ingest.handle([up(self.a.identity.device_id, "offers", [("o2", {"gpu_ms_per_hour": 2000})])])
        self.settlement = settlement
        self.client = TestClient(create_app(db, self.ledger))

    def get(self, path: str, token: str | None, **params: str | int) -> httpx2.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.client.get(path, headers=headers, params=params)


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return World(db, tmp_path)


def test_every_route_needs_a_valid_token(world: World) -> None:
    for path in ("/v1/devices", "/v1/usage?period=2026-11", "/v1/capacity", "/v1/payouts?period=2026-11"):
        assert world.get(path, None).status_code == 401
        assert world.get(path, "btt_not-a-token").status_code == 401


def test_a_clinic_sees_only_its_own_devices(world: World) -> None:
    a, b = world.a.identity.device_id, world.b.identity.device_id
    devices = world.get("/v1/devices", world.token_a).json()["devices"]
    assert [d["id"] for d in devices] == [a]
    assert devices[0]["keyids"] == [world.a.identity.key.keyid]
    for path in (f"/v1/devices/{b}/receipts", f"/v1/devices/{b}/settlements", "/v1/devices/nope/receipts"):
        assert world.get(path, world.token_a).status_code == 404
    assert world.get(f"/v1/devices/{b}/receipts", world.token_b).status_code == 200
    usage_b = world.get("/v1/usage", world.token_b, period="2026-11").json()["usage"]
    assert usage_b == [{"device": b, "kind": "analysis", "receipts": 2, "units": 2, "overage_units": 2}]


def test_usage_per_period(world: World) -> None:
    a = world.a.identity.device_id
    usage = world.get("/v1/usage", world.token_a, period="2026-11").json()["usage"]
    assert usage == [
        {"device": a, "kind": "analysis", "receipts": 5, "units": 5, "overage_units": 2},
        {"device": a, "kind": "exposure", "receipts": 1, "units": 1, "overage_units": 1},
    ]
    assert world.get("/v1/usage", world.token_a, period="2026-10").json()["usage"] == []
    assert world.get("/v1/usage", world.token_a, period="2026-13").status_code == 422


def test_receipts_come_with_inclusion_proofs_that_verify(world: World) -> None:
    a = world.a.identity.device_id
    body = world.get(f"/v1/devices/{a}/receipts", world.token_a).json()
    settlement = parse_settlement(world.settlement["signed"], "")
    assert [r["seq"] for r in body["receipts"]] == [1, 2, 3, 4, 5, 6]
    for entry in body["receipts"][:5]:
        proof = entry["inclusion"]
        assert proof["root"] == settlement.root
        verify_inclusion(canonical_bytes(entry["envelope"]["signed"]), proof["index"], proof["proof"], settlement)
    assert body["receipts"][5]["inclusion"] is None
    page = world.get(f"/v1/devices/{a}/receipts", world.token_a, after_seq=4, limit=1).json()
    assert [r["seq"] for r in page["receipts"]] == [5]
    assert page["receipts"][0]["inclusion"]["index"] == 4
    settlements = world.get(f"/v1/devices/{a}/settlements", world.token_a).json()
    assert settlements["settlements"] == [world.settlement]


def test_stand_alone_proof_verifies_with_the_device_side_verifier(world: World) -> None:
    a, b = world.a.identity.device_id, world.b.identity.device_id
    doc = world.get(f"/v1/devices/{a}/receipts/3/proof", world.token_a).json()
    receipt, settlement = verify_proof(doc, Trust.of([world.manufacturer.public]))
    assert (receipt.seq, settlement.batch) == (3, 1)
    assert world.get(f"/v1/devices/{a}/receipts/6/proof", world.token_a).status_code == 404
    assert world.get(f"/v1/devices/{b}/receipts/1/proof", world.token_a).status_code == 404


def test_payouts_per_clinic_and_owner_from_settled_receipts(world: World) -> None:
    doc = world.get("/v1/payouts", world.token_a, period="2026-11").json()
    # settled: 4 analyses (3 prepaid at 1000, 1 overage at 1500) and 1 exposure without a right (tariff 200)
    assert doc["receipts"] == 5
    assert doc["clinics"] == [
        {"clinic": "btt-operator", "currency": "CNY", "prepaid_units": 0, "prepaid_amount": 0,
         "overage_units": 1, "overage_amount": 200, "amount": 200},
        {"clinic": "clinic-a", "currency": "CNY", "prepaid_units": 3, "prepaid_amount": 3000,
         "overage_units": 1, "overage_amount": 1500, "amount": 4500},
    ]  # fmt: skip
    assert doc["owners"] == [
        {"owner": "owner-x", "currency": "CNY", "amount": 3290},
        {"owner": "owner-y", "currency": "CNY", "amount": 1410},
    ]
    text = world.get("/v1/payouts", world.token_a, period="2026-11", format="csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["role"], r["party"], r["amount"]) for r in rows] == [
        ("clinic", "btt-operator", "200"),
        ("clinic", "clinic-a", "4500"),
        ("owner", "owner-x", "3290"),
        ("owner", "owner-y", "1410"),
    ]
    # clinic B's device has no settled receipts: nothing billed
    assert world.get("/v1/payouts", world.token_b, period="2026-11").json()["receipts"] == 0


def test_ledger_refuses_unsigned_grants_and_unknown_periods(world: World) -> None:
    with pytest.raises(RegistryError, match="not trusted"):
        world.ledger.add_grant(make_grant(generate_key(), id="grant-2"))
    with pytest.raises(RegistryError, match="YYYY-MM"):
        world.ledger.statement("2026-1")


def test_capacity_shows_the_latest_offer(world: World) -> None:
    capacity = world.get("/v1/capacity", world.token_a).json()["capacity"]
    assert [(c["device"], c["offer"]) for c in capacity] == [(world.a.identity.device_id, {"gpu_ms_per_hour": 2000})]
    assert world.get("/v1/capacity", world.token_b).json()["capacity"] == []


def test_openapi_document_lists_the_routes_and_bearer_auth(world: World) -> None:
    doc = world.client.get("/openapi.json").json()
    assert {"/v1/devices", "/v1/usage", "/v1/devices/{device}/receipts", "/v1/devices/{device}/settlements",
            "/v1/payouts", "/v1/capacity"} <= set(doc["paths"])  # fmt: skip
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_bad_parameters_are_422_with_the_reason_never_500(world: World) -> None:
    a = world.a.identity.device_id
    cases: list[tuple[str, dict[str, str | int], str]] = [
        (f"/v1/devices/{a}/receipts", {"after_seq": 2**64}, "after_seq"),
        (f"/v1/devices/{a}/receipts", {"after_seq": -1}, "after_seq"),
        (f"/v1/devices/{a}/receipts/{2**64}/proof", {}, "seq"),
        ("/v1/usage", {"period": "0000-01"}, "period"),
        ("/v1/payouts", {"period": "2026-13"}, "period"),
        ("/v1/devices/a b/receipts", {}, "device"),
        ("/v1/capacity/payouts", {"device": "a\x00b"}, "device"),
        ("/v1/capacity/jobs/not%20a%20job", {}, "job_id"),
    ]
    for path, params, name in cases:
        response = world.get(path, world.token_a, **params)
        assert response.status_code == 422, (path, params, response.text)
        assert response.json()["detail"][0]["loc"][-1] == name
    for path in ("/v1/usage", "/v1/payouts"):  # the last month there is: nothing in it, and no overflow
        assert world.get(path, world.token_a, period="9999-12").status_code == 200

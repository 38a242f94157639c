"""The API's status, daily usage, rights, shares and jobs: what the portal's pages show, served to clinics as JSON.

The portal and these routes read the same functions (:mod:`cloud_relay.fleet`, ``Coordinator.jobs``); each is
scoped to the token's clinic exactly like the rest of the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.capacity.market import Requirements
from cloud_relay.fleet import device_status
from cloud_relay.storage import Database
from tests.relay_helpers import throwaway_db
from tests.test_relay_api import BACKEND_PARAMS, NOV_2026, World

ROUTES = ("/v1/status", "/v1/rights", "/v1/shares", "/v1/capacity/jobs")


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with throwaway_db(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return World(db, tmp_path)


def test_the_new_routes_need_a_token_and_are_in_the_openapi_document(world: World) -> None:
    a = world.a.identity.device_id
    for path in (*ROUTES, f"/v1/devices/{a}/usage/daily?period=2026-11"):
        assert world.get(path, None).status_code == 401
    paths = world.get("/openapi.json", None).json()["paths"]
    assert {*ROUTES, "/v1/devices/{device}/usage/daily"} <= set(paths)


def test_status_is_the_clinics_devices_with_what_the_relay_last_heard(world: World, db: Database) -> None:
    a, b = world.a.identity.device_id, world.b.identity.device_id
    status = world.get("/v1/status", world.token_a).json()["devices"]
    assert [s["device"] for s in status] == [a]
    assert (status[0]["last_seq"], status[0]["asset"]) == (6, "asset-1")
    assert status[0]["last_seen_ms"] is not None
    assert status[0]["alerts"] == []
    assert [s["device"] for s in world.get("/v1/status", world.token_b).json()["devices"]] == [b]
    # one data path: the portal's pages read the function the route serves
    assert status == [s.to_json() for s in device_status(db, "clinic-a", 0)]


def test_daily_usage_by_kind_and_isolation(world: World) -> None:
    a, b = world.a.identity.device_id, world.b.identity.device_id
    answer = world.get(f"/v1/devices/{a}/usage/daily", world.token_a, period="2026-11").json()
    assert (answer["device"], answer["period"]) == (a, "2026-11")
    by_kind = {d["kind"]: (d["receipts"], d["units"]) for d in answer["days"]}
    assert by_kind == {"analysis": (5, 5), "exposure": (1, 1)}
    assert {d["day_ms"] for d in answer["days"]} == {NOV_2026}
    assert world.get(f"/v1/devices/{a}/usage/daily", world.token_a, period="2026-10").json()["days"] == []
    assert world.get(f"/v1/devices/{b}/usage/daily", world.token_a, period="2026-11").status_code == 404
    assert world.get(f"/v1/devices/{a}/usage/daily", world.token_a, period="2026-13").status_code == 422
    assert world.get(f"/v1/devices/{a}/usage/daily", world.token_a).status_code == 422


def test_rights_show_units_used_and_left_in_exact_minor_units(world: World) -> None:
    rights = world.get("/v1/rights", world.token_a).json()["rights"]
    assert len(rights) == 1
    right = rights[0]
    assert (right["id"], right["holder"], right["kind"], right["units"]) == ("grant-1", "clinic-a", "analysis", 3)
    assert right["unit_price"] == {"currency": "CNY", "amount": 1000}
    assert (right["used"], right["left"]) == (3, 0)
    assert world.get("/v1/rights", world.token_b).json()["rights"] == []


def test_shares_of_the_clinics_assets_only(world: World) -> None:
    shares = world.get("/v1/shares", world.token_a).json()["shares"]
    assert [(t["asset"], t["version"]) for t in shares] == [("asset-1", 1)]
    assert {o["owner"]: o["bps"] for o in shares[0]["owners"]} == {"owner-x": 7000, "owner-y": 3000}
    assert world.get("/v1/shares", world.token_b).json()["shares"] == []


def test_jobs_list_the_clinics_own_newest_first(world: World, db: Database) -> None:
    coordinator = Coordinator(db)
    first = coordinator.submit("clinic-a", "b" * 64, "c" * 64, Requirements(2), False)
    second = coordinator.submit("clinic-a", "b" * 64, "c" * 64, Requirements(3), True)
    other = coordinator.submit("clinic-b", "b" * 64, "c" * 64, Requirements(1), False)
    jobs = world.get("/v1/capacity/jobs", world.token_a).json()["jobs"]
    assert {j["job_id"] for j in jobs} == {first, second}
    assert {j["job_id"]: (j["items"], j["spot_check"], j["state"]) for j in jobs}[second] == (3, True, "queued")
    assert [j["job_id"] for j in world.get("/v1/capacity/jobs", world.token_b).json()["jobs"]] == [other]
    assert len(world.get("/v1/capacity/jobs", world.token_a, limit=1).json()["jobs"]) == 1
    assert world.get("/v1/capacity/jobs", world.token_a, limit=0).status_code == 422
    assert {j["job_id"] for j in coordinator.jobs()} == {first, second, other}

"""Clinics cannot see each other: every route of the OpenAPI document, called with clinic B's token, shows nothing
of clinic A's (SQLite and PostgreSQL).

The walk takes the routes from ``/openapi.json`` itself, so a route added later is walked too; a route with a
parameter or a body the walk has no value for fails here until one is added below. Path parameters are filled
with A's ids (its device, a settled receipt, its job, its blob) and with B's own (B's job ran on A's device);
each query parameter with every value listed for it. No answer may contain anything that names A (its device id,
clinic id, key id, job id, offer id, receipt hashes, signatures or settlement), except a 404 or 422 repeating
the id B itself asked for.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.relay_helpers import TwoClinics, throwaway_db, two_clinics

BACKEND_PARAMS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.integration)]
CAPABILITY_ROUTES = {("get", "/v1/capacity/blobs/{sha256}")}
"""Routes anyone may call who knows the value in the path: a blob by its sha256 (devices fetch job inputs there
without a token; a hash names content, never a clinic)."""


@pytest.fixture(params=BACKEND_PARAMS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TwoClinics]:
    with throwaway_db(request.param, tmp_path) as db:
        yield two_clinics(db, tmp_path)


def _markers(world: TwoClinics) -> set[str]:
    """Strings that only clinic A's data contains."""
    a = world.a
    receipts = a.book.receipts(a.conn)
    marks = {a.identity.device_id, "clinic-a", a.identity.key.keyid, world.job_a, world.offer_a}
    marks |= {json.dumps(e["signatures"][0]["sig"]).strip('"') for e in receipts}
    marks |= {e["signed"]["prev"] for e in receipts[1:]}
    marks |= {world.settlement_a["signed"]["root"], world.settlement_a["signatures"][0]["sig"]}
    return marks


def _requests(world: TwoClinics, method: str, path: str, operation: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every request the walk makes to one operation (``TestClient.request`` keyword arguments)."""
    paths: dict[str, list[Any]] = {
        "device": [world.a.identity.device_id, world.b.identity.device_id],
        "seq": [1, 4],
        "job_id": [world.job_a, world.job_b],
        "sha256": [world.blob],
    }
    queries: dict[str, list[Any]] = {
        "period": ["2026-11"],
        "format": ["json", "csv"],
        "after_seq": [0],
        "limit": [1000],
        "device": [world.a.identity.device_id, world.b.identity.device_id, None],
    }
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("put", "/v1/capacity/blobs"): {"content": b"a bundle of clinic A"},
        ("post", "/v1/capacity/jobs"): {"json": {"bundle": world.blob, "batch": world.blob, "items": 2}},
    }
    parameters = operation.get("parameters", [])
    unknown = [p["name"] for p in parameters if p["in"] in ("path", "query") and p["name"] not in {**paths, **queries}]
    assert not unknown, f"{method.upper()} {path}: give the isolation walk values for {unknown}"
    if "requestBody" in operation:
        assert (method, path) in bodies, f"{method.upper()} {path}: give the isolation walk a request body"
    in_path = [p["name"] for p in parameters if p["in"] == "path"]
    in_query = [p["name"] for p in parameters if p["in"] == "query"]
    for path_values in itertools.product(*(paths[n] for n in in_path)):
        url = path.format(**dict(zip(in_path, path_values, strict=True)))
        for query_values in itertools.product(*(queries[n] for n in in_query)):
            params = {n: v for n, v in zip(in_query, query_values, strict=True) if v is not None}
            yield {"method": method, "url": url, "params": params, **bodies.get((method, path), {})}


def _walk(world: TwoClinics, token: str) -> Iterator[tuple[str, int, str]]:
    """``(request, status, body)`` for every request of every operation in the OpenAPI document."""
    client = TestClient(world.app)
    document = client.get("/openapi.json").json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if (method, path) in CAPABILITY_ROUTES:
                continue
            for request in _requests(world, method, path, operation):
                response = client.request(**request, headers={"Authorization": f"Bearer {token}"})
                yield f"{method.upper()} {request['url']} {request['params']}", response.status_code, response.text


def test_a_second_clinic_sees_nothing_of_the_first_on_any_route(world: TwoClinics) -> None:
    markers = _markers(world)
    walked = 0
    for request, status, body in _walk(world, world.token_b):
        walked += 1
        assert status < 500, (request, status, body)
        echoed = request if status in (404, 422) else ""  # "no device X in this clinic" repeats what B asked
        leaked = sorted(m for m in markers if m in body and m not in echoed)
        assert not leaked, (request, status, leaked, body[:300])
    assert walked >= 20


def test_the_walk_sees_the_first_clinic_with_its_own_token(world: TwoClinics) -> None:
    """The markers are what A's own answers show: the walk above would see a leak."""
    seen = set()
    markers = _markers(world)
    for _, status, body in _walk(world, world.token_a):
        if status == 200:
            seen |= {m for m in markers if m in body}
    assert seen >= {world.a.identity.device_id, "clinic-a", world.a.identity.key.keyid, world.job_a, world.offer_a}


def test_capacity_routes_scope_payouts_offers_and_assignments(world: TwoClinics) -> None:
    client = TestClient(world.app)
    a, b = world.a.identity.device_id, world.b.identity.device_id

    def get(path: str, token: str, **params: str) -> Any:
        response = client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        return response.status_code, response.json()

    status, doc = get("/v1/capacity/payouts", world.token_a)
    assert (status, sorted(p["job_id"] for p in doc["payouts"])) == (200, sorted([world.job_a, world.job_b]))
    assert {p["device"] for p in doc["payouts"]} == {a}
    assert get("/v1/capacity/payouts", world.token_b) == (200, {"payouts": []})
    assert get("/v1/capacity/payouts", world.token_b, device=a)[0] == 404
    assert get("/v1/capacity/payouts", world.token_b, device=b) == (200, {"payouts": []})
    # the market: B sees A's offer's terms, not its device or offer id; A sees its own in full
    [offer_b] = get("/v1/capacity/offers", world.token_b)[1]["offers"]
    assert (offer_b["device"], offer_b["offer_id"], offer_b["price_per_item_micro"]) == (None, None, 10)
    [offer_a] = get("/v1/capacity/offers", world.token_a)[1]["offers"]
    assert (offer_a["device"], offer_a["offer_id"]) == (a, world.offer_a)
    # B's job ran on A's device: B sees that it ran and how, not where
    status, job = get(f"/v1/capacity/jobs/{world.job_b}", world.token_b)
    assert (status, job["state"], job["assignments"]) == (
        200,
        "done",
        [{"device": None, "role": "primary", "state": "done"}],
    )
    assert get(f"/v1/capacity/jobs/{world.job_a}", world.token_b)[0] == 404

"""Builders for the relay tests: a throw-away SQLite or PostgreSQL database, devices with receipts, up messages,
signed capacity offers and results, :func:`two_clinics` (a relay holding two clinics' data, for the API tests), and
:data:`ARBITRARY_JSON` (hypothesis: JSON the relay must refuse without raising).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI
from hypothesis import strategies as st

from cloud_relay.api import create_app
from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.capacity.market import Requirements
from cloud_relay.ingest import Ingestor, UpMessage
from cloud_relay.ledger import Ledger, period_bounds
from cloud_relay.registry import MANUFACTURER, Registry
from cloud_relay.storage import Database, open_database
from protocol.capacity import OFFER, RESULT, outputs_digest, sign
from protocol.clock import now_ms
from protocol.keys import PrivateKey, generate_key
from tests.receipts_helpers import Box, make_box

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
MAX_DEPTH = 32  # cloud_relay.messages.MAX_DEPTH (the tests import it from there; here to build values around it)
BACKENDS = ["sqlite", "postgresql"]


@contextlib.contextmanager
def throwaway_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file under ``tmp_path``, or a new PostgreSQL database dropped afterwards."""
    if backend == "sqlite":
        yield str(tmp_path / "relay.db")
        return
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_db(backend: str, tmp_path: Path) -> Iterator[Database]:
    with throwaway_url(backend, tmp_path) as url:
        db = open_database(url)
        try:
            yield db
        finally:
            db.close()


def provisioned(
    db: Database, data_dir: Path, manufacturer: PrivateKey, clinic: str | None = "clinic-a", *, hybrid: bool = False
) -> Box:
    """A device box whose manufacturer the relay trusts, registered (with its certificate) to ``clinic``; a hybrid
    identity (ed25519 + ML-DSA-65) when ``hybrid``."""
    box = make_box(data_dir, manufacturer, hybrid=hybrid)
    registry = Registry(db)
    registry.add_trust_key(MANUFACTURER, manufacturer.public)
    if clinic is not None:
        registry.add_clinic(clinic, clinic.title())
    registry.add_device(box.identity.device_id, clinic=clinic, certificate=box.identity.certificate)
    return box


def up(device: str, kind: str, items: list[tuple[str, Any]]) -> UpMessage:
    """An up message as the device's publisher sends it."""
    doc = {"v": 1, "device": device, "kind": kind, "items": [{"id": i, "body": b} for i, b in items]}
    return UpMessage(f"btt/v1/dev/{device}/up/{kind}", json.dumps(doc).encode("utf-8"))


def receipt_items(box: Box, after_seq: int = 0) -> list[tuple[str, Any]]:
    """``(item id, receipt envelope)`` for the box's receipts after ``after_seq`` (item id ``r<seq>``)."""
    return [(f"r{e['signed']['seq']}", e) for e in box.book.receipts(box.conn, after_seq)]


def offer_envelope(box: Box, offer_id: str, now: int, price: int = 10, ttl_ms: int = 300_000) -> dict[str, Any]:
    """A capacity offer signed by ``box``: a CPU, 16 items at most, ``price`` micro-units per item."""
    fields = {
        "offer_id": offer_id,
        "device": box.identity.device_id,
        "accelerator": {"kind": "cpu", "name": "test", "memory_mb": 4096},
        "score_mflops": 1000,
        "max_memory_mb": 2048,
        "max_power_w": 0,
        "max_items": 16,
        "price_per_item_micro": price,
        "issued_ms": now,
        "expires_ms": now + ttl_ms,
    }
    return sign(OFFER, fields, box.identity.key)


def result_envelope(
    box: Box,
    job: dict[str, Any],
    outputs: list[list[int]],
    now: int,
    status: str = "done",
    key: PrivateKey | None = None,
) -> dict[str, Any]:
    """``box``'s signed result for the dispatched ``job`` envelope (compute receipts 1 and 2)."""
    s = job["signed"]
    fields = {
        "job_id": s["job_id"], "device": box.identity.device_id, "offer_id": s["offer_id"], "status": status,
        "bundle": s["bundle"], "batch": s["batch"], "items": len(outputs), "outputs": outputs,
        "output_digest": outputs_digest(outputs), "device_ms": 1500, "receipts": [1, 2], "finished_ms": now,
    }  # fmt: skip
    return sign(RESULT, fields, key or box.identity.key)


NOV_2026 = period_bounds("2026-11")[0] + 86_400_000
"""When :func:`two_clinics`' receipts were made (usage and payouts of ``2026-11``)."""


@dataclass
class TwoClinics:
    """A relay with clinic A's data (see :func:`two_clinics`) and a second clinic B with a device of its own."""

    app: FastAPI
    a: Box
    b: Box
    token_a: str
    token_b: str
    job_a: str
    job_b: str
    blob: str
    offer_a: str
    settlement_a: dict[str, Any]


def two_clinics(db: Database, tmp_path: Path) -> TwoClinics:
    """Clinic A: a device with 3 settled and 1 unsettled receipt, a capacity report, a live capacity offer, a blob,
    and two paid jobs on its device (A's own, and one clinic B submitted). Clinic B: a device with 2 receipts."""
    manufacturer = generate_key()
    a = provisioned(db, tmp_path / "a", manufacturer, clinic="clinic-a")
    b = provisioned(db, tmp_path / "b", manufacturer, clinic="clinic-b")
    registry = Registry(db)
    token_a, token_b = registry.add_token("clinic-a"), registry.add_token("clinic-b")
    for box in (a, b):
        box.book._clock = lambda: NOV_2026
    a.record(3)
    settlement = a.book.close_batch(a.conn, 100)
    assert settlement is not None
    a.record(1)
    b.record(2)
    ingest = Ingestor(db)
    for box in (a, b):
        ingest.handle([up(box.identity.device_id, "receipts", receipt_items(box))])
    device_a = a.identity.device_id
    ingest.handle([up(device_a, "settlements", [("s1", settlement)])])
    ingest.handle([up(device_a, "offers", [("o1", {"gpu_ms_per_hour": 1000})])])
    coordinator = Coordinator(db, generate_key(), spot_check_fraction=0.0)
    blob = coordinator.put_blob(b"a bundle of clinic A")
    now = now_ms()
    offer_id = f"offer-a-{now}"
    coordinator.handle(device_a, offer_envelope(a, offer_id, now, ttl_ms=3_600_000))
    jobs = []
    for clinic in ("clinic-a", "clinic-b"):
        job_id = coordinator.submit(clinic, blob, blob, Requirements(2), False)
        [(device, job)] = coordinator.tick()
        assert device == device_a
        coordinator.handle(device_a, result_envelope(a, job, [[1, 2], [3, 4]], now))
        jobs.append(job_id)
    job_a, job_b = jobs
    return TwoClinics(
        create_app(db, Ledger(db, operator="btt-operator")),
        a,
        b,
        token_a,
        token_b,
        job_a,
        job_b,
        blob,
        offer_id,
        settlement,
    )


# Arbitrary JSON, on purpose outside what the relay takes: unbounded integers, NaN and Infinity, lone surrogates,
# NUL and other control characters, non-ASCII keys, and nesting just under and far past the relay's depth limit.
_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**53 - 2, max_value=2**64 + 2)
    | st.floats()
    | _text
    | st.sampled_from(["", "0" * 64, "f" * 64, "receipt", "settlement", "certificate", "ed25519", "done"])
)
_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3), max_leaves=12
)


@st.composite
def _deep(draw: st.DrawFn) -> Any:
    value: Any = draw(_scalars)
    for _ in range(draw(st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH + 1, 200, 900]))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


ARBITRARY_JSON: st.SearchStrategy[Any] = _json | _deep()


def dumps_any(value: Any) -> bytes:
    """``value`` as JSON text the way a careless sender writes it (NaN allowed, lone surrogates escaped)."""
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")

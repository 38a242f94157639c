"""Builders for the relay tests: a throw-away SQLite or PostgreSQL database, devices with receipts, up messages."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from cloud_relay.ingest import UpMessage
from cloud_relay.registry import MANUFACTURER, Registry
from cloud_relay.storage import Database, open_database
from edge.receipts.keys import PrivateKey
from tests.receipts_helpers import Box, make_box

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
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


def provisioned(db: Database, data_dir: Path, manufacturer: PrivateKey, clinic: str | None = "clinic-a") -> Box:
    """A device box whose manufacturer the relay trusts, registered (with its certificate) to ``clinic``."""
    box = make_box(data_dir, manufacturer)
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

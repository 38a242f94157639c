"""Shared builders for the receipts tests: a provisioned box, a book on a real SQLite database, signed grants."""

from __future__ import annotations

import copy
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.db import DB_FILENAME, connect
from edge.receipts.book import ReceiptBook
from edge.receipts.identity import DeviceIdentity, KeyFiles, load_identity, provision
from protocol.grants import GRANT
from protocol.keys import PrivateKey, generate_key, seal
from protocol.receipts import Use
from protocol.shares import SHARE_TABLE


@dataclass
class Box:
    """A provisioned data directory with an open book."""

    data_dir: Path
    manufacturer: PrivateKey
    identity: DeviceIdentity
    conn: sqlite3.Connection
    book: ReceiptBook

    def record(self, n: int, kind: str = "analysis") -> None:
        self.book.record_batch(self.conn, [Use(kind=kind, study_uid=f"1.2.840.99.{i}") for i in range(n)])

    def export(self) -> dict[str, Any]:
        return copy.deepcopy(self.book.export(self.conn))


def make_box(
    data_dir: Path,
    manufacturer: PrivateKey | None = None,
    clock: Any = None,
    valid_days: int | None = None,
    *,
    hybrid: bool = False,
) -> Box:
    manufacturer = manufacturer or generate_key()
    files = KeyFiles(data_dir / "keys")
    provision(files, manufacturer=manufacturer, valid_days=valid_days, hybrid=hybrid)
    identity = load_identity(files)
    assert identity is not None
    conn = connect(data_dir / DB_FILENAME)
    book = ReceiptBook(identity) if clock is None else ReceiptBook(identity, clock=clock)
    book.migrate(conn)
    return Box(data_dir, manufacturer, identity, conn, book)


def make_grant(issuer: PrivateKey, **overrides: Any) -> dict[str, Any]:
    body = {
        "type": GRANT,
        "format": 1,
        "id": "grant-1",
        "issuer": issuer.keyid,
        "holder": "clinic-a",
        "asset": "asset-1",
        "kind": "analysis",
        "units": 3,
        "not_before_ms": 0,
        "not_after_ms": 10**13,
        "unit_price": {"currency": "CNY", "amount": 1000},
        "overage_price": {"currency": "CNY", "amount": 1500},
    }
    body.update(overrides)
    return seal(GRANT, body, issuer)


def make_shares(issuer: PrivateKey, owners: list[tuple[str, int]], version: int = 1) -> dict[str, Any]:
    body = {
        "type": SHARE_TABLE,
        "format": 1,
        "issuer": issuer.keyid,
        "asset": "asset-1",
        "version": version,
        "effective_from_ms": 0,
        "owners": [{"owner": o, "bps": b} for o, b in owners],
    }
    return seal(SHARE_TABLE, body, issuer)

"""How receipts, settlements and the device certificates enter the outbox: relayed from the receipt book's tables.

The receipt book (:mod:`edge.receipts.book`) commits every receipt with the state change that caused it, in the same
``edge.db``. :func:`feed` copies what is new since the last copy into the outbox, in ONE transaction that inserts
the outbox items and advances the per-source mark (``receipts``: the last receipt ``seq`` copied, ``settlements``:
the last ``batch``). So a receipt is never lost (it is durable in the book before, and the copy either commits whole
with its mark or not at all) and never queued twice (the mark moves with the copy, and item ids are unique). A
settlement is copied only after every receipt it covers, so it is sent after them. It reads through the book's API
(``ReceiptBook.receipts`` and ``ReceiptBook.settlements_after``), never the book's tables. This
leaves the book's hook untouched: nothing in a clinical transaction waits for the outbox. Bodies are the signed
envelopes exactly as ``edge.receipts`` exports them; they carry study digests (salted HMACs), never study UIDs or
any other patient data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from edge.db import transaction
from edge.outbox.outbox import Outbox
from edge.receipts.book import ReceiptBook
from protocol.encoding import canonical_bytes, sha256_hex

__all__ = ["FEED_BATCH", "certificate_item", "feed"]

FEED_BATCH = 1000
"""Receipts copied per transaction (the rest follow in the next)."""


def certificate_item(certificate: Mapping[str, Any]) -> str:
    """The outbox id of a device certificate envelope."""
    return "certificate:" + sha256_hex(canonical_bytes(certificate))[:16]


def feed(outbox: Outbox, conn: sqlite3.Connection, book: ReceiptBook) -> int:
    """Copy the certificate and the receipts and settlements not yet copied; returns how many items were queued."""
    queued = 0
    identity = book.identity
    with transaction(conn):
        if identity is not None:  # retired certificates too, oldest first: receipts signed before a rotation
            for cert in (*identity.history, identity.certificate):
                queued += outbox.enqueue(conn, "certificate", cert, item=certificate_item(cert))
        envelopes = book.receipts(conn, after_seq=outbox.mark(conn, "receipts"), limit=FEED_BATCH)
        for envelope in envelopes:
            item = f"receipt:{envelope['signed']['seq']}:{envelope['signatures'][0]['sig'][:16]}"
            queued += outbox.enqueue(conn, "receipts", envelope, item=item)
        if envelopes:
            outbox.set_mark(conn, "receipts", int(envelopes[-1]["signed"]["seq"]))
        settlements = book.settlements_after(conn, outbox.mark(conn, "settlements"), outbox.mark(conn, "receipts"))
        for settlement in settlements:
            envelope = settlement.envelope
            item = f"settlement:{settlement.batch}:{envelope['signatures'][0]['sig'][:16]}"
            queued += outbox.enqueue(conn, "settlements", envelope, item=item)
        if settlements:
            outbox.set_mark(conn, "settlements", settlements[-1].batch)
    return queued

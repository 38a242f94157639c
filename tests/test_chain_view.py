"""The portal's "On chain" column from the chain journal (``cloud_relay.chain.view``), without a node.

The journal rows are written as the chain service writes them (``add_intent``, then its status); the end-to-end
test on anvil (tests/test_chain_e2e.py) checks the same view after a real mint and burn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_relay.chain.journal import add_intent
from cloud_relay.chain.rights import request_id
from cloud_relay.chain.store import ChainStore, Disbursement, RightRow, migrate
from cloud_relay.chain.view import JournalView
from cloud_relay.portal import describe
from cloud_relay.portal.chain import ChainKind
from cloud_relay.portal.i18n import Translator
from cloud_relay.storage import Database, open_database

CLINIC = "0x" + "11" * 20
OWNER = "0x" + "22" * 20
TOKEN = "0x" + "33" * 20
RIGHT = "0x" + "ab" * 32


def shown(db: Database, kind: ChainKind, ref: str, locale: str = "en") -> str | None:
    """What the portal's On chain column shows for ``ref``."""
    return describe(Translator(locale), JournalView(db).state(kind, ref))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(str(tmp_path / "relay.db"))
    migrate(database)
    try:
        yield database
    finally:
        database.close()


def _journal(db: Database, key: str, kind: str, status: str, block: int | None = None, error: str = "") -> None:
    with db.transaction() as tx:
        add_intent(tx, key, kind, (None, b""), {}, now=1)
        tx.execute(
            "UPDATE chain_journal SET status = ?, block_number = ?, error = ? WHERE key = ?",
            (status, block, error or None, key),
        )


def _burn(db: Database, key: str, amount: int) -> None:
    with db.transaction() as tx:
        add_intent(tx, key, "burn", (None, b""), {"from": CLINIC, "id": RIGHT, "amount": amount}, now=1)
        tx.execute("UPDATE chain_journal SET status = 'confirmed', block_number = 9 WHERE key = ?", (key,))


def test_a_right_from_queued_to_minted_with_its_burns(db: Database) -> None:
    assert shown(db, "grant", "grant-1") is None  # not on chain
    ChainStore(db).set_address("clinic-a", CLINIC)
    with db.transaction() as tx:
        ChainStore.add_right(tx, RightRow("grant-1", RIGHT, "clinic-a", 10, {}, True), 1)
    assert shown(db, "grant", "grant-1") == "mint not journalled"
    key = f"mint:0x{request_id('grant-1').hex()}"
    _journal(db, key, "mint", "intent")
    assert shown(db, "grant", "grant-1") == "mint queued"
    with db.transaction() as tx:
        tx.execute("UPDATE chain_journal SET status = 'sent' WHERE key = ?", (key,))
    assert shown(db, "grant", "grant-1") == "mint sent"
    with db.transaction() as tx:
        tx.execute("UPDATE chain_journal SET status = 'confirmed', block_number = 7 WHERE key = ?", (key,))
    _burn(db, "burn:1", 3)
    _burn(db, "burn:2", 1)
    assert shown(db, "grant", "grant-1") == "minted in block 7, 4 burned"
    assert shown(db, "grant", "grant-1", "zh-CN") == "已于区块 7 铸造，已销毁 4"


def test_a_failed_mint_says_why(db: Database) -> None:
    with db.transaction() as tx:
        ChainStore.add_right(tx, RightRow("grant-2", RIGHT, "clinic-a", 1, {}, True), 1)
    _journal(db, f"mint:0x{request_id('grant-2').hex()}", "mint", "failed", error="execution reverted: replay")
    assert shown(db, "grant", "grant-2") == "mint failed: execution reverted: replay"


def test_a_payout_from_root_to_claimed(db: Database) -> None:
    ref = "2026-11/owner-x/CNY"
    assert shown(db, "payout", ref) is None  # not disbursed
    claims = [{"index": 0, "owner": "owner-x", "account": OWNER, "amount": 700}]
    with db.transaction() as tx:
        ChainStore.add_disbursement(tx, Disbursement("2026-11", "CNY", TOKEN, "0x" + "00" * 32, 700, claims), 1)
    assert shown(db, "payout", "2026-11/owner-y/CNY") == "not disbursed"
    assert shown(db, "payout", "2026-11/CNY") is None  # not a payout reference
    _journal(db, f"publish:2026-11:{TOKEN}", "publish", "sent")
    assert shown(db, "payout", ref) == "root sent"
    assert shown(db, "payout", ref, "zh-CN") == "根哈希已发送"
    with db.transaction() as tx:
        tx.execute("UPDATE chain_journal SET status = 'confirmed', block_number = 12 WHERE kind = 'publish'")
    assert shown(db, "payout", ref) == "claimable (root in block 12)"
    _journal(db, f"claim:2026-11:{TOKEN}:0", "claim", "confirmed", block=13)
    assert shown(db, "payout", ref) == "claimed in block 13"

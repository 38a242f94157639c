"""Payouts from verified receipts: clinics by rights consumed and overage, owners by share, per currency."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.db import transaction
from edge.receipts.grants import install_grant
from protocol import errors
from protocol.grants import verify_grant
from protocol.keys import generate_key
from protocol.money import Money
from protocol.payout import compute_payout
from protocol.receipts import Use
from protocol.shares import current_table, verify_share_table
from protocol.verify import Trust, verify_export
from tests.receipts_helpers import make_box, make_grant, make_shares


def test_payout_end_to_end(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    issuer = generate_key()
    issuers = {issuer.keyid: issuer.public}
    sgd = make_grant(
        issuer,
        id="grant-sg",
        holder="clinic-b",
        kind="exposure",
        units=10,
        unit_price={"currency": "SGD", "amount": 250},
        overage_price={"currency": "SGD", "amount": 400},
    )
    with transaction(b.conn):
        install_grant(b.conn, make_grant(issuer, units=3), issuers, "asset-1")
        install_grant(b.conn, sgd, issuers, "asset-1")
    b.book.record_batch(
        b.conn,
        [Use(kind="analysis", units=2), Use(kind="analysis", units=2), Use(kind="exposure"), Use(kind="compute")],
    )
    b.book.close_batch(b.conn, 100)
    doc = b.export()
    verified = verify_export(doc, Trust.of([b.manufacturer.public]))
    grants = {g.id: g for g in (verify_grant(e, issuers) for e in doc["grants"])}
    table = current_table(
        [verify_share_table(make_shares(issuer, [("bank", 6000), ("maker", 2500), ("clinic-a", 1500)]), issuers)],
        "asset-1",
        at_ms=10**12,
    )
    payout = compute_payout(verified.receipts, grants, table, tariff={"compute": Money("CNY", 99)}, operator="clinic-a")
    a_cny = payout.clinics[("clinic-a", "CNY")]
    # 3 analyses prepaid at 10.00, 1 over at 15.00, 1 compute at the 0.99 tariff
    assert (a_cny.prepaid_units, a_cny.prepaid_amount) == (3, 3000)
    assert (a_cny.overage_units, a_cny.overage_amount) == (2, 1500 + 99)
    assert payout.clinics[("clinic-b", "SGD")].total == 250
    assert payout.revenue() == {"CNY": 4599, "SGD": 250}
    assert payout.owners[("bank", "CNY")] == 2759  # 2759.4
    assert payout.owners[("maker", "CNY")] == 1150  # 1149.75 -> largest remainder
    assert payout.owners[("clinic-a", "CNY")] == 690  # 689.85
    assert sum(v for (_, c), v in payout.owners.items() if c == "CNY") == 4599
    assert payout.owners[("bank", "SGD")] == 150


def test_payout_needs_a_price_for_uses_without_rights(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    issuer = generate_key()
    [receipt] = b.book.record_batch(b.conn, [Use(kind="exposure")])
    table = verify_share_table(make_shares(issuer, [("bank", 10_000)]), {issuer.keyid: issuer.public})
    with pytest.raises(errors.PayoutError):
        compute_payout([receipt], {}, table, tariff={}, operator="clinic-a")


def test_share_tables_are_checked_and_versioned() -> None:
    issuer = generate_key()
    issuers = {issuer.keyid: issuer.public}
    with pytest.raises(errors.RightsError):
        verify_share_table(make_shares(issuer, [("a", 5000), ("b", 4000)]), issuers)
    with pytest.raises(errors.RightsError):
        verify_share_table(make_shares(issuer, [("a", 5000), ("a", 5000)]), issuers)
    with pytest.raises(errors.UntrustedIssuer):
        verify_share_table(make_shares(generate_key(), [("a", 10_000)]), issuers)
    v1 = verify_share_table(make_shares(issuer, [("a", 10_000)]), issuers)
    v2 = verify_share_table(make_shares(issuer, [("a", 5000), ("b", 5000)], version=2), issuers)
    assert current_table([v2, v1], "asset-1", at_ms=5) is v2
    with pytest.raises(errors.RightsError):
        current_table([v1], "asset-2", at_ms=5)


def test_money_is_integer_minor_units() -> None:
    with pytest.raises(errors.MalformedRecord):
        Money("CNY", 1.5)  # type: ignore[arg-type]
    with pytest.raises(errors.MalformedRecord):
        Money("yuan", 1)
    assert Money.from_json({"currency": "USDC", "amount": 7}) == Money("USDC", 7)

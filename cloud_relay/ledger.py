"""The settlement ledger: what each clinic owes and each owner earns, per calendar month, from settled receipts.

Only receipts covered by a verified settlement count. They are priced with :mod:`protocol.payout` (the
same exact integer arithmetic the device side uses): the grants and share tables the operator added (each
verified against the trusted issuer keys), and the tariff for uses without a right, billed to the configured
operator. Receipts are grouped by asset and by the share table in force at each receipt's time, so an
ownership change mid-month splits exactly at the change. Export as JSON or CSV.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cloud_relay.errors import RegistryError
from cloud_relay.registry import ISSUER, trusted_keys
from cloud_relay.storage import Database, Tx
from protocol.clock import now_ms
from protocol.encoding import canonical_bytes
from protocol.errors import ProtocolError
from protocol.grants import Grant, verify_grant
from protocol.money import Money
from protocol.payout import ClinicCharge, compute_payout
from protocol.receipts import Receipt
from protocol.shares import ShareTable, current_table, verify_share_table

__all__ = ["CSV_COLUMNS", "PERIOD_PATTERN", "Ledger", "Statement", "period_bounds"]

PERIOD_PATTERN = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$"
"""A UTC calendar month ``YYYY-MM`` from 1970-01 to 9999-12 (receipt times are Unix milliseconds)."""
_PERIOD_RE = re.compile(PERIOD_PATTERN)
CSV_COLUMNS = (
    "period",
    "role",
    "party",
    "currency",
    "prepaid_units",
    "prepaid_amount",
    "overage_units",
    "overage_amount",
    "amount",
)


def period_bounds(period: str) -> tuple[int, int]:
    """``[start, end)`` in Unix milliseconds of the UTC calendar month ``YYYY-MM`` (:data:`PERIOD_PATTERN`)."""
    match = _PERIOD_RE.match(period)
    if match is None:
        raise RegistryError(f"period {period!r:.20} must be YYYY-MM, from 1970-01 to 9999-12")
    year, month = int(match[1]), int(match[2])
    start = calendar.timegm((year, month, 1, 0, 0, 0))
    end = start + calendar.monthrange(year, month)[1] * 86_400
    return start * 1000, end * 1000


@dataclass(frozen=True)
class Statement:
    """One period's charges by (clinic, currency) and payouts by (owner, currency), in minor units."""

    period: str
    receipts: int
    clinics: dict[tuple[str, str], ClinicCharge]
    owners: dict[tuple[str, str], int]

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "receipts": self.receipts,
            "clinics": [
                {
                    "clinic": clinic,
                    "currency": currency,
                    "prepaid_units": c.prepaid_units,
                    "prepaid_amount": c.prepaid_amount,
                    "overage_units": c.overage_units,
                    "overage_amount": c.overage_amount,
                    "amount": c.total,
                }
                for (clinic, currency), c in sorted(self.clinics.items())
            ],
            "owners": [
                {"owner": owner, "currency": currency, "amount": amount}
                for (owner, currency), amount in sorted(self.owners.items())
            ],
        }

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        doc = self.to_json()
        for c in doc["clinics"]:
            writer.writerow([self.period, "clinic", c["clinic"], *(c[k] for k in CSV_COLUMNS[3:])])
        for o in doc["owners"]:
            writer.writerow([self.period, "owner", o["owner"], o["currency"], "", "", "", "", o["amount"]])
        return out.getvalue()

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"


class Ledger:
    """Prices settled receipts; holds the grants, share tables and tariff it prices with."""

    def __init__(self, db: Database, *, operator: str, clock: Callable[[], int] = now_ms) -> None:
        self._db = db
        self._operator = operator
        self._clock = clock

    @staticmethod
    def _issuers(tx: Tx) -> dict[str, Any]:
        return {k.keyid: k for k in trusted_keys(tx, ISSUER)}

    def add_grant(self, envelope: Any) -> Grant:
        """Verify a grant against the trusted issuer keys and keep it (idempotent)."""
        with self._db.transaction() as tx:
            try:
                grant = verify_grant(envelope, self._issuers(tx))
            except ProtocolError as exc:
                raise RegistryError(f"grant: {exc}") from exc
            tx.execute(
                "INSERT INTO grants (id, holder, kind, asset, envelope, added_ms) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (grant.id, grant.holder, grant.kind, grant.asset, canonical_bytes(envelope).decode(), self._clock()),
            )
        return grant

    def add_share_table(self, envelope: Any) -> ShareTable:
        """Verify a share table against the trusted issuer keys and keep it (idempotent)."""
        with self._db.transaction() as tx:
            try:
                table = verify_share_table(envelope, self._issuers(tx))
            except ProtocolError as exc:
                raise RegistryError(f"share table: {exc}") from exc
            tx.execute(
                "INSERT INTO share_tables (asset, version, envelope, added_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (table.asset, table.version, canonical_bytes(envelope).decode(), self._clock()),
            )
        return table

    def set_tariff(self, kind: str, price: Money) -> None:
        """The price of one unit of ``kind`` used without a right."""
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO tariffs (kind, currency, amount) VALUES (?, ?, ?)"
                " ON CONFLICT (kind) DO UPDATE SET currency = excluded.currency, amount = excluded.amount",
                (kind, price.currency, price.amount),
            )

    def statement(self, period: str, clinic: str | None = None) -> Statement:
        """The period's statement over all devices, or over ``clinic``'s devices only."""
        start, end = period_bounds(period)
        with self._db.transaction() as tx:
            issuers = self._issuers(tx)
            grants = {
                g.id: g
                for g in (verify_grant(json.loads(r[0]), issuers) for r in tx.all("SELECT envelope FROM grants"))
            }
            tables = [
                verify_share_table(json.loads(r[0]), issuers) for r in tx.all("SELECT envelope FROM share_tables")
            ]
            tariff = {
                str(r[0]): Money(str(r[1]), int(r[2])) for r in tx.all("SELECT kind, currency, amount FROM tariffs")
            }
            where, params = ("AND d.clinic = ?", (start, end, clinic)) if clinic else ("", (start, end))
            rows = tx.all(
                "SELECT d.asset, r.device, r.keyid, r.seq, r.prev, r.time_ms, r.kind, r.units, r.overage_units,"
                " r.right_id, r.hash FROM receipts r JOIN devices d ON d.id = r.device"
                " WHERE r.time_ms >= ? AND r.time_ms < ? AND EXISTS (SELECT 1 FROM settlements s"
                f" WHERE s.device = r.device AND r.seq BETWEEN s.first_seq AND s.last_seq) {where}"
                " ORDER BY r.device, r.seq",
                params,
            )
        try:
            return self._price(period, rows, grants, tables, tariff)
        except ProtocolError as exc:
            raise RegistryError(f"period {period}: {exc}") from exc

    def _price(
        self,
        period: str,
        rows: Iterable[tuple[Any, ...]],
        grants: dict[str, Grant],
        tables: list[ShareTable],
        tariff: dict[str, Money],
    ) -> Statement:
        groups: dict[tuple[str, int], tuple[ShareTable, list[Receipt]]] = {}
        count = 0
        for asset, *fields in rows:
            receipt = Receipt(*fields)
            table = current_table(tables, str(asset), receipt.time_ms)
            groups.setdefault((table.asset, table.version), (table, []))[1].append(receipt)
            count += 1
        clinics: dict[tuple[str, str], ClinicCharge] = {}
        owners: dict[tuple[str, str], int] = {}
        for table, receipts in groups.values():
            payout = compute_payout(receipts, grants, table, tariff=tariff, operator=self._operator)
            for key, charge in payout.clinics.items():
                total = clinics.setdefault(key, ClinicCharge())
                total.prepaid_units += charge.prepaid_units
                total.prepaid_amount += charge.prepaid_amount
                total.overage_units += charge.overage_units
                total.overage_amount += charge.overage_amount
            for key, amount in payout.owners.items():
                owners[key] = owners.get(key, 0) + amount
        return Statement(period, count, clinics, owners)

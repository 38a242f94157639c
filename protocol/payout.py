"""Payouts: what each clinic owes for the uses in verified receipts, and how that splits between the owners.

Exact integer arithmetic in minor units, per currency (amounts of different currencies are never added or
converted: a grant priced in CNY and one in SGD give two totals, each split on its own).

Clinics: a receipt's units covered by its right are billed to the right's holder at the grant's ``unit_price``
(prepaid value consumed); its ``overage_units`` at the grant's ``overage_price``, or, with no right at all, to
the ``operator`` clinic at the ``tariff`` price for the service kind.

Owners, rounding rule (largest remainder, deterministic): each owner first gets
``floor(total * bps / 10000)``; the minor units left over (fewer than the number of owners) go one each to the
owners with the largest remainders ``total * bps mod 10000``, ties to the lower owner id. Every owner gets
within one minor unit of the exact share, and the parts always sum to the total exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from protocol.errors import PayoutError
from protocol.grants import Grant
from protocol.money import Money
from protocol.receipts import Receipt
from protocol.shares import TOTAL_BPS, Share, ShareTable

__all__ = ["ClinicCharge", "Payout", "compute_payout", "split"]


def split(total: int, shares: Sequence[Share]) -> dict[str, int]:
    """Split ``total`` minor units by basis points with the largest-remainder rule (see the module docstring)."""
    if total < 0:
        raise PayoutError(f"cannot split a negative amount {total}")
    if sum(s.bps for s in shares) != TOTAL_BPS:
        raise PayoutError(f"shares must sum to {TOTAL_BPS} basis points")
    parts = {s.owner: total * s.bps // TOTAL_BPS for s in shares}
    left = total - sum(parts.values())
    by_remainder = sorted(shares, key=lambda s: (-(total * s.bps % TOTAL_BPS), s.owner))
    for s in by_remainder[:left]:
        parts[s.owner] += 1
    return parts


@dataclass
class ClinicCharge:
    """One clinic's charges in one currency."""

    prepaid_units: int = 0
    prepaid_amount: int = 0
    overage_units: int = 0
    overage_amount: int = 0

    @property
    def total(self) -> int:
        return self.prepaid_amount + self.overage_amount


@dataclass(frozen=True)
class Payout:
    """Clinic charges by ``(clinic, currency)`` and owner payouts by ``(owner, currency)``, in minor units."""

    clinics: dict[tuple[str, str], ClinicCharge] = field(default_factory=dict)
    owners: dict[tuple[str, str], int] = field(default_factory=dict)

    def revenue(self) -> dict[str, int]:
        """Total billed per currency."""
        out: dict[str, int] = {}
        for (_, currency), charge in self.clinics.items():
            out[currency] = out.get(currency, 0) + charge.total
        return out


def compute_payout(
    receipts: Iterable[Receipt],
    grants: Mapping[str, Grant],
    shares: ShareTable,
    *,
    tariff: Mapping[str, Money],
    operator: str,
) -> Payout:
    """Bill the uses in ``receipts`` to clinics and split the revenue between the owners in ``shares``."""
    payout = Payout()

    def charge(clinic: str, price: Money, units: int, *, prepaid: bool) -> None:
        entry = payout.clinics.setdefault((clinic, price.currency), ClinicCharge())
        if prepaid:
            entry.prepaid_units += units
            entry.prepaid_amount += units * price.amount
        else:
            entry.overage_units += units
            entry.overage_amount += units * price.amount

    for r in receipts:
        covered = r.units - r.overage_units
        if r.right is not None:
            grant = grants.get(r.right)
            if grant is None:
                raise PayoutError(f"receipt {r.seq}: grant {r.right} is unknown")
            if covered:
                charge(grant.holder, grant.unit_price, covered, prepaid=True)
            if r.overage_units:
                charge(grant.holder, grant.overage_price, r.overage_units, prepaid=False)
        else:
            price = tariff.get(r.kind)
            if price is None:
                raise PayoutError(f"receipt {r.seq}: no tariff for {r.kind!r} uses without a right")
            charge(operator, price, r.units, prepaid=False)
    for currency, total in sorted(payout.revenue().items()):
        for owner, amount in split(total, shares.owners).items():
            payout.owners[(owner, currency)] = amount
    return payout

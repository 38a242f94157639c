"""A month of anchoring on paper, from the measured per-transaction gas (pure arithmetic, no node)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.ledger.measure import BATCH_SIZES, Measured
from edge.config import ReceiptsConfig

__all__ = ["CHAINS", "DEVICES", "RECEIPTS_PER_DAY", "Chain", "Row", "month", "settlements_per_device_month"]

DEVICES = (15_000, 500_000)
RECEIPTS_PER_DAY = 50
"""Receipts per device per day: docs/scaling.md's "Traffic per device" (a busy unit, sized generously)."""
DAYS = 30
PERIOD_ROOTS_PER_MONTH = 24 * DAYS
"""The period-root option: the relay anchors one root over all settlement roots of each hour."""


@dataclass(frozen=True)
class Chain:
    name: str
    block_gas_limit: int
    block_time_s: float

    @property
    def month_gas(self) -> float:
        """All the gas the chain's blocks hold in a month."""
        return self.block_gas_limit * DAYS * 86_400 / self.block_time_s


CHAINS = (
    Chain("mainnet 30M / 12 s", 30_000_000, 12),
    Chain("mainnet 36M / 12 s", 36_000_000, 12),
    Chain("L2 30M / 2 s", 30_000_000, 2),
)


def settlements_per_device_month(cfg: ReceiptsConfig, receipts_per_day: int = RECEIPTS_PER_DAY) -> int:
    """The most settlements a device closes in a month at the box's settlement settings.

    A settlement closes when the oldest unsettled receipt is ``settle_interval_s`` old or ``settle_max_receipts``
    are unsettled: at most one per interval with at least one receipt in it, more only when an interval holds more
    than ``settle_max_receipts`` receipts.
    """
    intervals_per_day = 86_400 / cfg.settle_interval_s
    per_day = min(float(receipts_per_day), intervals_per_day + receipts_per_day / cfg.settle_max_receipts)
    return math.floor(per_day) * DAYS


@dataclass(frozen=True)
class Row:
    scenario: str
    txs: int
    gas: float

    def hours(self, chain: Chain) -> float:
        """Hours of the chain's blocks the month's anchoring fills, were every block ours."""
        return self.gas / chain.block_gas_limit * chain.block_time_s / 3600

    def share(self, chain: Chain) -> float:
        """The share of the chain's monthly gas."""
        return self.gas / chain.month_gas


def _packed(settlements: int, m: Measured) -> Row:
    txs = math.ceil(settlements / m.max_settlements_per_tx)
    return Row("", txs, settlements * m.per_settlement_gas + txs * m.many_fixed_gas)


def month(devices: int, m: Measured, cfg: ReceiptsConfig) -> list[Row]:
    """The month's anchoring for ``devices`` devices, one row per way of putting it on chain."""
    receipts = devices * RECEIPTS_PER_DAY * DAYS
    settlements = devices * settlements_per_device_month(cfg)
    single = sum(m.single_gas.values()) / len(m.single_gas)
    rows = [
        Row("naive: every receipt posted (1 tx each)", receipts, receipts * m.naive_gas),
        Row("box defaults, one settlement per tx (anchor)", settlements, settlements * single),
    ]
    packed = _packed(settlements, m)
    rows.append(Row(f"box defaults, anchorMany ({m.max_settlements_per_tx}/tx)", packed.txs, packed.gas))
    for n in BATCH_SIZES:
        packed = _packed(math.ceil(receipts / n), m)
        rows.append(Row(f"{n:,} receipts per settlement, anchorMany", packed.txs, packed.gas))
    rows.append(Row("one period root an hour (anchor)", PERIOD_ROOTS_PER_MONTH, PERIOD_ROOTS_PER_MONTH * single))
    return rows

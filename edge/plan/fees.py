"""A clinic's fee schedule: its currency and a fee in minor units per procedure key (``[plan] fee_schedule``).

::

    format = 1
    currency = "USD"                  # ISO 4217 (protocol.money): amounts are integers of its minor unit
    [fees]
    crown = 120000                    # 1,200.00 USD
    endodontic_therapy = { anterior = 90000, premolar = 105000, molar = 130000 }

A fee may be split by the code sets' variants (:data:`edge.plan.codes.VARIANTS`). A procedure without a fee gets
no estimate (the plan says so). :func:`parse_fee_schedule` is pure; :func:`load_fee_schedule` reads the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.plan._toml import check_format, get_str, get_table, read_table, unknown_keys
from edge.plan.codes import VARIANTS
from edge.plan.errors import PlanTableError
from protocol.errors import MalformedRecord
from protocol.money import Money

__all__ = ["FeeSchedule", "load_fee_schedule", "parse_fee_schedule"]


@dataclass(frozen=True)
class FeeSchedule:
    """Fees of one clinic in one currency."""

    currency: str
    source: str
    fees: Mapping[str, Mapping[str, int]]
    """Procedure key -> variant (``""`` for the one fee) -> minor units."""

    def fee(self, procedure: str, variants: Sequence[str]) -> Money | None:
        """The fee of ``procedure`` for the first of ``variants`` it is split by, else its one fee; None if none."""
        entry = self.fees.get(procedure)
        if entry is None:
            return None
        for variant in (*variants, ""):
            if variant in entry:
                return Money(self.currency, entry[variant])
        return None


def load_fee_schedule(path: Path) -> FeeSchedule:
    return parse_fee_schedule(read_table(path), str(path))


def _amount(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlanTableError(f"{where}: expected a whole number of minor units >= 0, got {value!r}")
    return value


def parse_fee_schedule(doc: Mapping[str, Any], source: str) -> FeeSchedule:
    """Check a fee schedule (its TOML document); :class:`PlanTableError` names the bad key."""
    where = Path(source).name
    unknown_keys(doc, {"format", "currency", "fees"}, where)
    check_format(doc, where)
    currency = get_str(doc, "currency", where)
    try:
        Money(currency, 0)
    except MalformedRecord as exc:
        raise PlanTableError(f"{where}.currency: {exc}") from exc
    fees: dict[str, dict[str, int]] = {}
    for key, value in get_table(doc, "fees", where).items():
        at = f"{where}.fees.{key}"
        if isinstance(value, Mapping):
            unknown_keys(value, set(VARIANTS), at)
            fees[key] = {variant: _amount(v, f"{at}.{variant}") for variant, v in value.items()}
        else:
            fees[key] = {"": _amount(value, at)}
    return FeeSchedule(currency=currency, source=source, fees=fees)

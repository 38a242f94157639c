"""Money as an integer amount of a currency's minor units; never a float, never converted implicitly.

The currency is a code, not an enum: ISO 4217 (``CNY``, ``SGD``, ``EUR``) or a settlement token symbol
(``USDC``); amounts of different currencies never mix (each is totalled and split on its own).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import MalformedRecord

__all__ = ["Money"]

_CURRENCY_RE = re.compile(r"^[A-Z][A-Z0-9]{2,11}$")


@dataclass(frozen=True, order=True)
class Money:
    """``amount`` minor units (fen, cents, token base units) of ``currency``."""

    currency: str
    amount: int

    def __post_init__(self) -> None:
        if not _CURRENCY_RE.match(self.currency):
            raise MalformedRecord(f"currency {self.currency!r} must be 3-12 upper-case letters or digits")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount < 0:
            raise MalformedRecord(f"amount {self.amount!r} must be a non-negative integer of minor units")

    def to_json(self) -> dict[str, Any]:
        """``{"currency": ..., "amount": ...}``."""
        return {"currency": self.currency, "amount": self.amount}

    @classmethod
    def from_json(cls, doc: Any) -> Money:
        """Parse ``{"currency", "amount"}``; :class:`MalformedRecord` when malformed."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("currency"), str):
            raise MalformedRecord(f"money: expected {{currency, amount}}, got {doc!r:.80}")
        return cls(doc["currency"], doc.get("amount"))  # type: ignore[arg-type]

"""The capacity market's decisions, as pure functions over plain values (no database, no clock, no network).

* :func:`match` picks the offer for a job: live (not expired, not withdrawn, not busy), on another device than
  ``exclude``, meeting the job's requirements (accelerator kinds, memory, score, items) at or under its price
  ceiling; the cheapest wins, then the fastest (score), then the oldest offer.
* :func:`spot_checked` decides, stably from the job id, whether a job is also run on a second device.
* :func:`disagreements` compares two devices' outputs item by item (:func:`protocol.capacity.outputs_agree`).
* :func:`payout_micro` is what a device earns for a verified result: items x the offer's price per item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol.capacity import outputs_agree

__all__ = ["Offer", "Requirements", "disagreements", "match", "payout_micro", "spot_checked"]


@dataclass(frozen=True)
class Offer:
    """A live offer as the registry holds it."""

    offer_id: str
    device: str
    kind: str
    memory_mb: int
    score_mflops: int
    max_items: int
    price_per_item_micro: int
    made_ms: int
    expires_ms: int
    busy: bool = False


@dataclass(frozen=True)
class Requirements:
    """What a job needs from a device."""

    items: int
    kinds: tuple[str, ...] = ("cuda", "jetson", "cpu")
    min_memory_mb: int = 0
    min_score_mflops: int = 0
    max_price_per_item_micro: int = 1_000_000


def match(offers: Iterable[Offer], needs: Requirements, now_ms: int, exclude: Sequence[str] = ()) -> Offer | None:
    """The best live offer for ``needs`` on a device not in ``exclude`` (module docstring), or None."""
    fit = [
        o
        for o in offers
        if not o.busy
        and o.expires_ms > now_ms
        and o.device not in exclude
        and o.kind in needs.kinds
        and o.memory_mb >= needs.min_memory_mb
        and o.score_mflops >= needs.min_score_mflops
        and o.max_items >= needs.items
        and o.price_per_item_micro <= needs.max_price_per_item_micro
    ]
    return min(fit, key=lambda o: (o.price_per_item_micro, -o.score_mflops, o.made_ms), default=None)


def spot_checked(job_id: str, fraction: float) -> bool:
    """True for about ``fraction`` of job ids, the same answer for the same id on every relay worker."""
    bucket = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") / 2**64
    return bucket < fraction


def disagreements(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the items whose outputs differ beyond tolerance (every index when the counts differ)."""
    if len(a) != len(b):
        return list(range(max(len(a), len(b))))
    return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if not outputs_agree(x, y)]


def payout_micro(items: int, price_per_item_micro: int) -> int:
    """A verified result's payout in micro-units."""
    return items * price_per_item_micro

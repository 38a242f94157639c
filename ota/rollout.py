"""Staged rollout: which devices take a bundle first (pure).

The policy travels in the bundle's *signed* targets metadata (``custom.rollout``), so the manufacturer's keys
decide it and any static web server can serve the repository; the relay may use the same function to choose
whom to tell. A device takes the bundle when it belongs to one of the named ``groups``, or when its stable
bucket (the first 8 bytes of ``sha256(device id)``, mod 100) is below ``percent``. With neither, everyone does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RolloutPolicy", "bucket", "in_rollout"]


@dataclass(frozen=True)
class RolloutPolicy:
    """``percent`` of devices (0-100) plus every device in ``groups``. The default reaches every device."""

    percent: int = 100
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueError(f"rollout percent {self.percent} is outside 0..100")

    def to_json(self) -> dict[str, Any]:
        return {"percent": self.percent, "groups": list(self.groups)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> RolloutPolicy:
        """The policy of a target's ``custom.rollout`` (absent: everyone). ``ValueError`` when malformed."""
        if doc is None:
            return cls()
        percent, groups = doc.get("percent", 100), doc.get("groups", [])
        if isinstance(percent, bool) or not isinstance(percent, int):
            raise ValueError("rollout percent must be an integer")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError("rollout groups must be a list of names")
        return cls(percent=percent, groups=tuple(groups))


def bucket(device_id: str) -> int:
    """The device's stable rollout bucket, 0..99."""
    return int.from_bytes(hashlib.sha256(device_id.encode("utf-8")).digest()[:8], "big") % 100


def in_rollout(device_id: str, device_groups: Iterable[str], policy: RolloutPolicy) -> bool:
    """True when ``policy`` reaches this device."""
    if set(device_groups) & set(policy.groups):
        return True
    return bucket(device_id) < policy.percent

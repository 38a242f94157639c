"""The compiled ledger contracts, committed beside this module as ``<Name>.json`` (built by
:mod:`cloud_relay.chain.compile`; ``python -m cloud_relay.chain.compile --check`` tells when they are stale).

    from cloud_relay.chain.artifacts import load
    anchor = load("SettlementAnchor")   # anchor.abi, anchor.bytecode (0x hex)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = ["CONTRACTS", "Artifact", "load"]

CONTRACTS = (
    "AssetShares",
    "NaiveReceiptLog",
    "PayoutDistributor",
    "ServiceRights",
    "SettlementAnchor",
    "TestStablecoin",
)
"""Every committed artefact's contract name."""


@dataclass(frozen=True)
class Artifact:
    """One compiled contract: its ABI (the JSON list) and creation bytecode (0x hex)."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


def load(name: str) -> Artifact:
    """The committed artefact of contract ``name`` (one of :data:`CONTRACTS`); ``KeyError`` for another name."""
    if name not in CONTRACTS:
        raise KeyError(f"no compiled contract {name!r} (known: {', '.join(CONTRACTS)})")
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"], deployed_bytecode=data["deployedBytecode"])

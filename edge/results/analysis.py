"""What the results stage needs from one analysis: the algorithm that ran and the findings it made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge.pipeline.findings import Finding
from models.bundle import Code, Manifest

__all__ = ["Algorithm", "Analysis"]


@dataclass(frozen=True)
class Algorithm:
    """The model bundle that produced the findings, as the SR's observer device names it."""

    bundle_id: str
    version: str
    name: str
    """Human-readable name (the manifest's description, or the id)."""
    codes: Mapping[str, Code] = field(default_factory=lambda: MappingProxyType({}))
    """Finding kind -> its coded meaning (SNOMED CT, from the manifest)."""
    clinical: bool = False
    """The bundle is cleared for clinical use (the manifest's ``clinical``)."""

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Algorithm:
        """The algorithm described by a bundle manifest."""
        return cls(
            bundle_id=manifest.id,
            version=manifest.version,
            name=manifest.description or manifest.id,
            codes=MappingProxyType({c.kind: c.code for c in manifest.findings.classes}),
            clinical=manifest.clinical,
        )


@dataclass(frozen=True)
class Analysis:
    """The findings of one source instance."""

    sop_instance_uid: str
    algorithm: Algorithm
    findings: tuple[Finding, ...]

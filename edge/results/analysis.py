"""What the results stage needs from one analysis: the algorithm that ran and the findings it made, and where
the agent reads it from (the pipeline worker's record)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge.errors import EdgeError, ResultBuildError
from edge.pipeline.findings import Finding
from edge.results.header import MANUFACTURER
from models.bundle import Code, Manifest

__all__ = ["Algorithm", "Analysis", "RecordedAnalyses"]


@dataclass(frozen=True)
class Algorithm:
    """The model bundle that produced the findings, as the SR's observer device names it."""

    bundle_id: str
    version: str
    name: str
    """The algorithm's name (the recorded analyses use the bundle id: manifests carry no short name)."""
    codes: Mapping[str, Code] = field(default_factory=lambda: MappingProxyType({}))
    """Finding kind -> its coded meaning (SNOMED CT, from the manifest)."""
    clinical: bool = False
    """The bundle is cleared for clinical use (the manifest's ``clinical``)."""
    precision: str = "fp32"
    """The precision of the network that ran: the bundle's own (``fp32``) or a variant's (``int8``)."""
    manufacturer: str = MANUFACTURER
    """Who made the algorithm (manifests do not name one yet: the reference bundles are this project's own)."""


@dataclass(frozen=True)
class Analysis:
    """The findings of one source instance."""

    sop_instance_uid: str
    algorithm: Algorithm
    findings: tuple[Finding, ...]


class RecordedAnalyses:
    """The analyses the pipeline worker recorded (``pipeline_results``, see :mod:`edge.pipeline.worker`).

    The coded meaning of each kind comes from the manifest ``manifest()`` returns (the active bundle's). It is
    read on first use and read again whenever an analysis names another model than the one read (an update was
    activated or rolled back); the model id and version are those recorded with the findings.
    """

    def __init__(self, manifest: Callable[[], Manifest]) -> None:
        self._read_manifest = manifest
        self._manifest: Manifest | None = None

    def _codes(self, model_id: str, version: str) -> Mapping[str, Code]:
        current = self._manifest
        if current is None or (current.id, current.version) != (model_id, version):
            try:
                current = self._manifest = self._read_manifest()
            except EdgeError as exc:
                raise ResultBuildError(f"cannot load the model bundle for the finding codes: {exc}") from exc
        return MappingProxyType({c.kind: c.code for c in current.findings.classes})

    def load(self, conn: sqlite3.Connection, sop_instance_uid: str) -> Analysis | None:
        """The recorded analysis of this instance, or ``None`` if it has none (or was skipped)."""
        row = conn.execute(
            "SELECT model_id, model_version, clinical, findings_json, precision FROM pipeline_results "
            "WHERE sop_instance_uid = ? AND status = 'analysed'",
            (sop_instance_uid,),
        ).fetchone()
        if row is None:
            return None
        algorithm = Algorithm(
            bundle_id=row[0],
            version=row[1],
            name=row[0],
            codes=self._codes(row[0], row[1]),
            clinical=bool(row[2]),
            precision=row[4],
        )
        try:
            findings = tuple(Finding.from_json(doc) for doc in json.loads(row[3]))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ResultBuildError(f"the recorded findings of {sop_instance_uid} are unreadable: {exc}") from exc
        return Analysis(sop_instance_uid=sop_instance_uid, algorithm=algorithm, findings=findings)

"""What the results stage needs from one analysis: the algorithm that ran and the findings it made, and where
the agent reads it from (the pipeline worker's record, :func:`edge.pipeline.records.analysis_record`; with the
source's header from the store, :func:`recorded_images`)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dental.findings import Finding
from edge.errors import EdgeError, ModelError, ResultBuildError
from edge.pipeline.records import analysis_record
from edge.results.header import MANUFACTURER
from edge.store.index import get_instance, list_instances
from models.bundle import Code, Manifest

__all__ = ["Algorithm", "Analysis", "RecordedAnalyses", "recorded_images"]


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

    The coded meaning of each kind comes from the manifest of the model that made the findings, among those
    ``manifests()`` returns (every active bundle: ``[pipeline] bundle_path``, then ``extra_bundles``). They are read
    on first use and read again whenever an analysis names a model (id and version) not among those read (an
    update was activated or rolled back); the model id and version are those recorded with the findings.
    """

    def __init__(self, manifests: Callable[[], Sequence[Manifest]]) -> None:
        self._read_manifests = manifests
        self._manifests: Sequence[Manifest] = ()

    def _codes(self, model_id: str, version: str) -> Mapping[str, Code]:
        manifest = _find(self._manifests, model_id, version)
        if manifest is None:
            try:
                self._manifests = tuple(self._read_manifests())
            except (EdgeError, ModelError) as exc:
                raise ResultBuildError(f"cannot load the model bundle for the finding codes: {exc}") from exc
            # the same model at another version (findings recorded before an update) still has its kinds' codes
            manifest = _find(self._manifests, model_id, version) or _find(self._manifests, model_id, None)
        if manifest is None:
            active = ", ".join(m.id for m in self._manifests) or "none"
            raise ResultBuildError(f"no active bundle is model {model_id!r} (active: {active}): its codes are unknown")
        return MappingProxyType({c.kind: c.code for c in manifest.findings.classes})

    def load(self, conn: sqlite3.Connection, sop_instance_uid: str) -> Analysis | None:
        """The recorded analysis of this instance, or ``None`` if it has none (or was skipped)."""
        record = analysis_record(conn, sop_instance_uid, analysed_only=True)
        if record is None:
            return None
        algorithm = Algorithm(
            bundle_id=record.model_id,
            version=record.model_version,
            name=record.model_id,
            codes=self._codes(record.model_id, record.model_version),
            clinical=bool(record.clinical),
            precision=record.precision,
        )
        try:
            findings = tuple(Finding.from_json(doc) for doc in json.loads(record.findings_json))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ResultBuildError(f"the recorded findings of {sop_instance_uid} are unreadable: {exc}") from exc
        return Analysis(sop_instance_uid=sop_instance_uid, algorithm=algorithm, findings=findings)


def _find(manifests: Sequence[Manifest], model_id: str, version: str | None) -> Manifest | None:
    return next((m for m in manifests if m.id == model_id and version in (None, m.version)), None)


def recorded_images(
    conn: sqlite3.Connection, data_dir: Path, uid: str, analyses: RecordedAnalyses
) -> list[tuple[Dataset, Analysis]]:
    """The header (without pixel data) and the analysis of instance ``uid``, or of every analysed instance of study
    ``uid``, oldest first; :class:`~edge.errors.ResultBuildError` when there is none."""
    instance = get_instance(conn, uid)
    instances = [instance] if instance is not None else list_instances(conn, uid)
    if not instances:
        raise ResultBuildError(f"{uid} is neither an instance nor a study on this box")
    out: list[tuple[Dataset, Analysis]] = []
    for item in instances:
        analysis = analyses.load(conn, item.sop_instance_uid)
        if analysis is None:
            continue
        try:
            header = dcmread(data_dir / item.path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise ResultBuildError(f"cannot read the source image {item.path}: {exc}") from exc
        out.append((header, analysis))
    if not out:
        raise ResultBuildError(f"no analysis is recorded for {uid}")
    return out

"""One image in, one result out: decode, preprocess, infer, post-process, with the time each stage took.

An image the model cannot read is a *skipped* result with the reason; a failure of the backend or of
post-processing raises :class:`~edge.errors.PipelineError` for the caller (the worker counts attempts).
Every result names the model (id, version, whether it is clinically validated) that produced it: findings are
AI output and are labelled as such downstream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

import models
from edge.config import PipelineConfig
from edge.errors import BundleError, UnsupportedImage
from edge.pipeline.backends import Backend, BackendOptions, select_backend
from edge.pipeline.findings import Finding
from edge.pipeline.postprocess import findings_from_outputs
from edge.pipeline.preprocess import pixel_spacing_mm, pixels_from_dataset, prepare
from models.bundle import Bundle, load_bundle
from models.golden import read_golden

INSTALL_ROOT = Path(models.__file__).resolve().parent.parent
"""Relative bundle paths are resolved against this directory (the one holding the ``models`` package)."""
ENGINE_CACHE = "engines"
"""TensorRT engines are cached in this directory under the data directory."""

__all__ = ["AnalysisResult", "Analyzer", "open_analyzer", "read_dataset", "resolve_bundle_path"]

Status = Literal["analysed", "skipped"]


@dataclass(frozen=True)
class AnalysisResult:
    """The outcome for one image, in the shape ``btt-edge analyze --json`` prints."""

    sop_instance_uid: str | None
    status: Status
    model_id: str
    model_version: str
    clinical: bool
    backend: str
    precision: str = "fp32"
    """The precision of the network that ran (``int8`` for a bundle's INT8 variant)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    reason: str | None = None
    """Why the image was skipped."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"sop_instance_uid": self.sop_instance_uid, "status": self.status}
        if self.reason is not None:
            doc["reason"] = self.reason
        doc["model"] = {"id": self.model_id, "version": self.model_version, "clinical": self.clinical}
        doc["backend"] = self.backend
        doc["precision"] = self.precision
        doc["timings_ms"] = {k: round(v, 2) for k, v in self.timings_ms.items()}
        doc["findings"] = [f.to_json() for f in self.findings]
        return doc


def read_dataset(path: Path) -> Dataset:
    """Read a DICOM file; :class:`UnsupportedImage` when it is not one."""
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise UnsupportedImage(f"not a readable DICOM file: {exc}") from exc


class Analyzer:
    """Analyses datasets with one bundle on one backend."""

    def __init__(self, bundle: Bundle, backend: Backend) -> None:
        if bundle.manifest.input.channels != 1:
            raise BundleError(
                f"{bundle.manifest.id}: the pipeline feeds 1-channel images, the bundle wants "
                f"{bundle.manifest.input.channels}"
            )
        self.bundle = bundle
        self.backend = backend

    def _result(self, uid: str | None, status: Status, timings: dict[str, float], **kw: Any) -> AnalysisResult:
        manifest = self.bundle.manifest
        return AnalysisResult(
            sop_instance_uid=uid,
            status=status,
            model_id=manifest.id,
            model_version=manifest.version,
            clinical=manifest.clinical,
            backend=self.backend.name,
            precision=self.backend.precision,
            timings_ms=timings,
            **kw,
        )

    def skipped(self, uid: str | None, reason: str) -> AnalysisResult:
        """A skipped result for an image that never reached the model."""
        return self._result(uid, "skipped", {}, reason=reason)

    def analyse(self, ds: Dataset) -> AnalysisResult:
        """Analyse one dataset (raises :class:`~edge.errors.PipelineError` on a backend or post-processing failure)."""
        manifest = self.bundle.manifest
        uid = str(ds.get("SOPInstanceUID", "") or "") or None
        timings: dict[str, float] = {}
        start = last = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal last
            now = time.perf_counter()
            timings[stage] = (now - last) * 1000.0
            last = now

        try:
            pixels = pixels_from_dataset(ds, modalities=manifest.input.modalities)
        except UnsupportedImage as exc:
            lap("decode")
            timings["total"] = (time.perf_counter() - start) * 1000.0
            return self._result(uid, "skipped", timings, reason=str(exc))
        spacing = pixel_spacing_mm(ds)
        lap("decode")
        prepared = prepare(pixels, manifest.input)
        del pixels
        lap("preprocess")
        outputs = self.backend.run(prepared.tensor)
        lap("infer")
        findings = findings_from_outputs(outputs, manifest, prepared, spacing, consume=True)
        lap("postprocess")
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return self._result(uid, "analysed", timings, findings=tuple(findings))


def resolve_bundle_path(path: Path) -> Path:
    """``path`` as configured; relative paths are taken from the agent's installation."""
    return path if path.is_absolute() else INSTALL_ROOT / path


def open_analyzer(config: PipelineConfig, data_dir: Path | None = None) -> Analyzer:
    """Load and verify the configured bundle and select its backend (golden vectors checked).

    ``data_dir`` holds the TensorRT engine cache; without it engines are built in memory.
    """
    bundle = load_bundle(resolve_bundle_path(config.bundle_path))
    calibration = None
    if config.tensorrt_precision == "int8":
        inputs = [read_golden(bundle.files[g.file], g.file)[0] for g in bundle.manifest.golden]
        calibration = np.concatenate(inputs) if inputs else None
    options = BackendOptions(
        threads=config.threads,
        engine_cache_dir=None if data_dir is None else data_dir / ENGINE_CACHE,
        precision=config.tensorrt_precision,
        calibration=calibration,
        variants=config.variants,
    )
    return Analyzer(bundle, select_backend(bundle, config.backend, options))

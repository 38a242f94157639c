"""One image in, one result out: route, decode, preprocess, infer, post-process, with the time each stage took.

An analyser holds every active bundle, each on its backend. Each image goes to the first bundle that accepts it
(:mod:`edge.pipeline.routing`: its DICOM attributes, then its size and shape); an image no bundle accepts, or one
the chosen model cannot read, is a *skipped* result with the reason, and gets no findings. A failure of the backend
or of post-processing raises :class:`~edge.errors.PipelineError` for the caller (the worker counts attempts).
Every analysed result names the model (id, version, whether it is clinically validated) that produced it: findings
are AI output and are labelled as such downstream; a result skipped before any model ran names none. It also says
the view the image was analysed as and the teeth the model numbered on it (what the tooth numbering already
computed for the findings; nothing is run for it), so that a draft plan can tell a missing tooth on a panoramic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

import models
from dental.findings import Finding
from edge.config import PipelineConfig
from edge.errors import BundleError, EdgeError, ModelError, PipelineError, UnsupportedImage
from edge.pipeline.backends import Backend, BackendOptions, select_backend
from edge.pipeline.clinical import apply_clinical_rules
from edge.pipeline.crops import crop_boxes, sample_crops
from edge.pipeline.decoders import decode
from edge.pipeline.postprocess import findings_from_crops, findings_from_decoded
from edge.pipeline.preprocess import pixel_spacing_mm, pixels_from_dataset, prepare
from edge.pipeline.routing import Skipped, image_facts, route
from models.bundle import Bundle, Manifest, load_bundle
from models.golden import read_golden

INSTALL_ROOT = Path(models.__file__).resolve().parent.parent
"""Relative bundle paths are resolved against this directory (the one holding the ``models`` package)."""
ENGINE_CACHE = "engines"
"""TensorRT engines are cached in this directory under the data directory."""

__all__ = [
    "CROP_BATCH",
    "ActiveModel",
    "AnalysisResult",
    "Analyzer",
    "Inference",
    "infer_findings",
    "infer_image",
    "open_analyzer",
    "read_dataset",
    "resolve_bundle_path",
]

Status = Literal["analysed", "skipped"]


@dataclass(frozen=True)
class AnalysisResult:
    """The outcome for one image, in the shape ``btt-edge analyze --json`` prints."""

    sop_instance_uid: str | None
    status: Status
    model_id: str
    """The bundle that ran; empty for an image skipped before any model ran (no bundle accepts it)."""
    model_version: str
    clinical: bool
    backend: str
    precision: str = "fp32"
    """The precision of the network that ran (``int8`` for a bundle's INT8 variant)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    reason: str | None = None
    """Why the image was skipped."""
    view: str | None = None
    """The view the image was routed as (:data:`models.bundle.VIEWS`: ``panoramic``, ``bitewing``, ...); None when
    skipped before routing chose a model."""
    teeth_fdi: tuple[str, ...] | None = None
    """The FDI numbers of the teeth the model numbered on the image (:attr:`Inference.teeth_fdi`); None when it
    numbers no teeth (no tooth output) or did not run."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"sop_instance_uid": self.sop_instance_uid, "status": self.status}
        if self.reason is not None:
            doc["reason"] = self.reason
        ran = bool(self.model_id)
        doc["model"] = {"id": self.model_id, "version": self.model_version, "clinical": self.clinical} if ran else None
        doc["backend"] = self.backend if ran else None
        doc["precision"] = self.precision if ran else None
        doc["view"] = self.view
        doc["teeth_fdi"] = None if self.teeth_fdi is None else list(self.teeth_fdi)
        doc["timings_ms"] = {k: round(v, 2) for k, v in self.timings_ms.items()}
        doc["findings"] = [f.to_json() for f in self.findings]
        return doc


def read_dataset(path: Path) -> Dataset:
    """Read a DICOM file; :class:`UnsupportedImage` when it is not one."""
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise UnsupportedImage(f"not a readable DICOM file: {exc}") from exc


@dataclass(frozen=True)
class ActiveModel:
    """One active bundle on the backend selected for it (and, for a two-stage bundle, its crop network's)."""

    bundle: Bundle
    backend: Backend
    crops: Backend | None = None


CROP_BATCH = 32
"""Tooth crops per run of a two-stage bundle's second network (a panoramic has up to 32 teeth: one run)."""

Runner = Callable[[npt.NDArray[np.float32]], Mapping[str, npt.NDArray[Any]]]


@dataclass(frozen=True)
class Inference:
    """What the model made of one image: its findings and the teeth it numbered."""

    findings: list[Finding]
    teeth_fdi: tuple[str, ...] | None
    """FDI numbers of the teeth the tooth numbering found, in the manifest's label order: for a two-stage bundle
    the teeth it cropped (a label shorter than :data:`edge.pipeline.crops.MIN_LENGTH_PX` is a fragment, not a
    tooth), else every number the tooth labels hold; None for a bundle without a tooth output."""


def infer_image(
    pixels: npt.NDArray[np.float32],
    manifest: Manifest,
    *,
    spacing: tuple[float, float] | None,
    run: Runner,
    run_crops: Runner | None,
    lap: Callable[[str], None] = lambda stage: None,
) -> Inference:
    """Findings and numbered teeth of one image's decoded ``pixels`` by the bundle ``manifest`` describes:
    prepare, run the network (``run``), post-process; for a two-stage bundle, crop each tooth the first network
    found from the source pixels and run the crops (``run_crops``, in batches of :data:`CROP_BATCH`).
    ``lap(stage)`` is called as each stage ends (``preprocess``, ``infer``, ``crops``, ``infer_crops``,
    ``postprocess``). The device and the held-out evaluation both call this one function (the evaluation through
    :func:`infer_findings`)."""
    prepared = prepare(pixels, manifest.input)
    lap("preprocess")
    outputs = dict(run(prepared.tensor))
    lap("infer")
    if manifest.crops is None or run_crops is None:
        if manifest.crops is not None:
            raise PipelineError(f"{manifest.id}: a two-stage bundle needs its crop network loaded")
        decoded = decode(outputs, manifest, consume=True)
        found = findings_from_decoded(decoded, prepared, spacing)
        lap("postprocess")
        return Inference(found, decoded.teeth())
    decoded = decode(outputs, manifest, consume=True)
    assert decoded.labels is not None
    crops = crop_boxes(decoded.labels, decoded.labels_fdi, prepared.to_source, manifest.crops.input)
    batch = sample_crops(pixels, crops, window=prepared.window, mean=manifest.input.mean, std=manifest.input.std)
    lap("crops")
    parts = [dict(run_crops(batch[i : i + CROP_BATCH])) for i in range(0, len(crops), CROP_BATCH)]
    crop_outputs = {name: np.concatenate([p[name] for p in parts]) for name in (parts[0] if parts else {})}
    lap("infer_crops")
    found = apply_clinical_rules(findings_from_crops(crop_outputs, crops, manifest, prepared.source_shape, spacing))
    lap("postprocess")
    return Inference(found, tuple(crop.fdi for crop in crops))


def infer_findings(
    pixels: npt.NDArray[np.float32],
    manifest: Manifest,
    *,
    spacing: tuple[float, float] | None,
    run: Runner,
    run_crops: Runner | None,
    lap: Callable[[str], None] = lambda stage: None,
) -> list[Finding]:
    """The findings of :func:`infer_image`."""
    return infer_image(pixels, manifest, spacing=spacing, run=run, run_crops=run_crops, lap=lap).findings


class Analyzer:
    """Analyses datasets with the active bundles, each image with the first that accepts it.

    ``bundle`` on ``backend`` (and, for a two-stage bundle, its crop network on ``crops``) is the primary model
    (``[pipeline] bundle_path``, or the active OTA slot); ``others``
    are active beside it (``[pipeline] extra_bundles``) and are offered an image in their order, after it.
    """

    def __init__(
        self, bundle: Bundle, backend: Backend, *, crops: Backend | None = None, others: Sequence[ActiveModel] = ()
    ) -> None:
        self.models = (ActiveModel(bundle, backend, crops), *others)
        ids = [m.bundle.manifest.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise BundleError(f"two active bundles share an id ({', '.join(ids)}): a result would not say which ran")
        for model in self.models:
            if (model.bundle.manifest.crops is None) != (model.crops is None):
                raise BundleError(
                    f"{model.bundle.manifest.id}: a two-stage bundle runs with its crop network, a one-stage bundle "
                    "without one"
                )
            if model.bundle.manifest.input.channels != 1:
                raise BundleError(
                    f"{model.bundle.manifest.id}: the pipeline feeds 1-channel images, the bundle wants "
                    f"{model.bundle.manifest.input.channels}"
                )
        self.bundle = bundle
        """The primary bundle (the one OTA updates and health-checks)."""
        self.backend = backend

    def close(self) -> None:
        """Close every model's backend."""
        for model in self.models:
            model.backend.close()
            if model.crops is not None:
                model.crops.close()

    @staticmethod
    def _result(
        model: ActiveModel, uid: str | None, status: Status, timings: dict[str, float], **kw: Any
    ) -> AnalysisResult:
        manifest = model.bundle.manifest
        return AnalysisResult(
            sop_instance_uid=uid,
            status=status,
            model_id=manifest.id,
            model_version=manifest.version,
            clinical=manifest.clinical,
            backend=model.backend.name,
            precision=model.backend.precision,
            timings_ms=timings,
            **kw,
        )

    @staticmethod
    def skipped(uid: str | None, reason: str, timings: dict[str, float] | None = None) -> AnalysisResult:
        """A skipped result for an image that never reached a model (it names none)."""
        return AnalysisResult(
            sop_instance_uid=uid,
            status="skipped",
            model_id="",
            model_version="",
            clinical=False,
            backend="",
            precision="",
            timings_ms=timings or {},
            reason=reason,
        )

    def analyse(self, ds: Dataset) -> AnalysisResult:
        """Analyse one dataset with the model that accepts it (raises :class:`~edge.errors.PipelineError` on a
        backend or post-processing failure)."""
        uid = str(ds.get("SOPInstanceUID", "") or "") or None
        timings: dict[str, float] = {}
        start = last = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal last
            now = time.perf_counter()
            timings[stage] = (now - last) * 1000.0
            last = now

        decision = route(image_facts(ds), [m.bundle for m in self.models])
        if isinstance(decision, Skipped):
            lap("decode")
            timings["total"] = (time.perf_counter() - start) * 1000.0
            return self.skipped(uid, decision.reason, timings)
        model = self.models[decision.index]
        manifest = model.bundle.manifest
        # a DX or CR naming no view is offered to panoramic models only (by its shape): it went in as a panoramic
        view = decision.view.view or ("panoramic" if decision.view.by_shape else None)
        try:
            pixels = pixels_from_dataset(ds, modalities=manifest.input.modalities)
        except UnsupportedImage as exc:
            lap("decode")
            timings["total"] = (time.perf_counter() - start) * 1000.0
            return self._result(model, uid, "skipped", timings, reason=str(exc), view=view)
        spacing = pixel_spacing_mm(ds)
        lap("decode")
        crops = None if model.crops is None else model.crops.run
        found = infer_image(pixels, manifest, spacing=spacing, run=model.backend.run, run_crops=crops, lap=lap)
        timings["total"] = (time.perf_counter() - start) * 1000.0
        return self._result(
            model, uid, "analysed", timings, findings=tuple(found.findings), view=view, teeth_fdi=found.teeth_fdi
        )


def resolve_bundle_path(path: Path) -> Path:
    """``path`` as configured; relative paths are taken from the agent's installation."""
    return path if path.is_absolute() else INSTALL_ROOT / path


def _load_network(config: PipelineConfig, network: Bundle, data_dir: Path | None) -> Backend:
    """One network of a bundle (its first, or its crop stage's view) on the configured backend."""
    calibration = None
    if config.tensorrt_precision == "int8":
        inputs = [read_golden(network.files[g.file], g.file)[0] for g in network.manifest.golden]
        calibration = np.concatenate(inputs) if inputs else None
    options = BackendOptions(
        threads=config.threads,
        engine_cache_dir=None if data_dir is None else data_dir / ENGINE_CACHE,
        precision=config.tensorrt_precision,
        calibration=calibration,
        variants=config.variants,
    )
    return select_backend(network, config.backend, options)


def _open_model(config: PipelineConfig, path: Path, data_dir: Path | None) -> ActiveModel:
    bundle = load_bundle(resolve_bundle_path(path))
    backend = _load_network(config, bundle, data_dir)
    if bundle.manifest.crops is None:
        return ActiveModel(bundle, backend)
    try:
        return ActiveModel(bundle, backend, _load_network(config, bundle.crop_stage(), data_dir))
    except (EdgeError, ModelError):
        backend.close()
        raise


def open_analyzer(config: PipelineConfig, data_dir: Path | None = None) -> Analyzer:
    """Load and verify the configured bundles (``bundle_path``, then ``extra_bundles``) and select a backend for
    each (golden vectors checked). Any of them failing fails the whole (the pipeline stays idle rather than
    skip, for good, the images a missing model was meant for).

    ``data_dir`` holds the TensorRT engine cache; without it engines are built in memory.
    """
    opened: list[ActiveModel] = []
    try:
        for path in (config.bundle_path, *config.extra_bundles):
            opened.append(_open_model(config, path, data_dir))
        primary, *others = opened
        return Analyzer(primary.bundle, primary.backend, crops=primary.crops, others=others)
    except (EdgeError, ModelError):
        for model in opened:
            model.backend.close()
            if model.crops is not None:
                model.crops.close()
        raise

"""Model bundles: a manifest, the network, golden vectors; verified before anything runs.

A bundle is a directory (or a ``.tar``/``.tar.gz`` archive of one) holding ``manifest.json``, ``model.onnx`` and
``golden/*.npz``, and optionally *variants*: the same network encoded for particular backends (an INT8-quantised
graph for ONNX Runtime on the CPU), each with golden vectors of its own. The manifest names the task, the agent
versions it needs, which images it is for (``accepts``: views, modalities, photometric interpretations, size, shape
and pixel spacing; :class:`Accepts`), how to prepare the input, what the outputs mean (their kind, segmentation
masks, detector boxes or per-tooth scores: :data:`OUTPUT_KINDS`; tooth labels; finding classes with SNOMED CT
codes and thresholds), the sha256 of every other file and the golden vectors. docs/bundles.md is the
format's description for whoever makes a bundle. :func:`parse_bundle` is the pure core
(file bytes in, a :class:`Bundle` out or a :class:`~models.errors.BundleError` naming the reason); :func:`load_bundle`
reads a directory or archive into it. Every file is read once and hashed; the bytes that were verified are the bytes
the backends run, so a file swapped after loading cannot slip in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from dental.teeth import fdi_to_universal
from models.errors import BundleError
from runtime.durable import atomic_write_bytes

__all__ = [
    "AGENT_VERSION",
    "BOX_FORMATS",
    "BOX_UNITS",
    "FORMAT",
    "LEGACY_PANORAMIC",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "OUTPUT_KINDS",
    "PHOTOMETRICS",
    "VIEWS",
    "Accepts",
    "Bundle",
    "Code",
    "CropInput",
    "CropStage",
    "DetectionOutput",
    "FindingClass",
    "FindingsOutput",
    "GoldenSpec",
    "InputSpec",
    "Manifest",
    "TeethOutput",
    "ToothClassificationOutput",
    "ToothIndexOutput",
    "Variant",
    "accepts_of",
    "describe_accepts",
    "describe_outputs",
    "load_bundle",
    "manifest_to_json",
    "pack_bundle",
    "parse_bundle",
    "parse_manifest",
    "sha256_hex",
    "version_satisfies",
    "write_bundle",
]

AGENT_VERSION = importlib.metadata.version("btt-edge")
"""The installed agent's version (its distribution's, which ``edge.__version__`` repeats): what a manifest's
``requires_agent`` is checked against unless the caller names another."""
FORMAT = 1
"""The manifest format this agent reads."""
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,2}$")
_CLAUSE_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+){0,2})\s*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class InputSpec:
    """How a radiograph becomes the model's input tensor ``float32 [N, channels, height, width]``.

    Preprocessing clips the image to its own ``window_percentiles``, scales to [0, 1], letterboxes to
    ``(height, width)`` and normalises with ``(x - mean) / std``. ``modalities`` are the DICOM modalities the
    model reads; others are skipped.
    """

    name: str
    height: int
    width: int
    channels: int
    window_percentiles: tuple[float, float]
    mean: float
    std: float
    modalities: tuple[str, ...]


VIEWS = ("panoramic", "cephalometric", "bitewing", "periapical", "occlusal", "cbct")
"""The views a bundle may accept: the extra-oral projections, the intra-oral ones, and CBCT (modality CT)."""
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
"""The photometric interpretations the pipeline decodes (greyscale, one sample per pixel)."""


@dataclass(frozen=True)
class Accepts:
    """Which images a bundle is for (the manifest's ``accepts`` block); the pipeline routes each image by it.

    An image goes to a bundle only when its view (from the DICOM attributes: :mod:`edge.pipeline.routing`) is one
    of ``views``, its Modality one of ``modalities``, its Photometric Interpretation one of ``photometric``, its
    Rows and Columns within their ranges, its width / height (Columns / Rows) within ``aspect`` and, when the
    image gives a pixel spacing, that spacing (mm, either axis) within ``pixel_spacing_mm``.
    """

    views: tuple[str, ...]
    modalities: tuple[str, ...]
    photometric: tuple[str, ...] = PHOTOMETRICS
    rows: tuple[int, int] = (1, 65535)
    columns: tuple[int, int] = (1, 65535)
    aspect: tuple[float, float] = (0.01, 100.0)
    """Columns / rows, inclusive."""
    pixel_spacing_mm: tuple[float, float] | None = None
    """Inclusive range for an image that gives a spacing (Pixel Spacing, else Imager Pixel Spacing); None: any."""
    declared: bool = True
    """False when the manifest has no ``accepts`` block and this was derived from it (:func:`accepts_of`)."""


LEGACY_PANORAMIC = Accepts(
    views=("panoramic",),
    modalities=("PX", "DX", "CR"),
    rows=(512, 4096),
    columns=(1024, 8192),
    aspect=(1.6, 3.2),
    pixel_spacing_mm=(0.05, 0.3),
    declared=False,
)
"""What a manifest without an ``accepts`` block is taken to accept: panoramics only, of a panoramic's size and
shape, in those of its ``input.modalities`` that can carry one. Bundles made before ``accepts`` existed were all
panoramic models; reading them this way keeps them working on panoramics and never sends them anything else."""


@dataclass(frozen=True)
class Code:
    """A coded concept, e.g. ``Code("SCT", "80967001", "Dental caries")``."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class FindingClass:
    """One channel of the ``findings`` output: a kind of finding, its code, and how to threshold it."""

    kind: str
    """Stable code name, e.g. ``caries``."""
    code: Code
    threshold: float
    """Sigmoid probability at or above which a pixel belongs to the finding."""
    min_area_px: int
    """Connected regions smaller than this (in model pixels) are dropped."""


@dataclass(frozen=True)
class TeethOutput:
    """The tooth-label output: softmax over ``1 + len(labels_fdi)`` channels, channel 0 background.

    It may be at a whole fraction (1/2, 1/4 ...) of the findings output's size: labels are repeated up.
    """

    name: str
    labels_fdi: tuple[str, ...]


@dataclass(frozen=True)
class FindingsOutput:
    """The finding classes, in order, and (for a segmentation bundle) the output holding one independent sigmoid
    channel per class. Detection and per-tooth classification bundles name their tensors in their own block
    (:class:`DetectionOutput`, :class:`ToothClassificationOutput`) and leave ``name`` empty."""

    name: str
    classes: tuple[FindingClass, ...]


OUTPUT_KINDS = ("segmentation", "detection", "tooth_classification")
"""What a bundle's outputs are (``outputs.kind``): masks, boxes, or a score per tooth and class."""
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
"""How a box's four numbers are written: corners; corner and size; centre and size."""
BOX_UNITS = ("pixels", "normalized")
"""Box coordinates in model-input pixels, or as fractions (0-1) of the model input's width and height."""
SCORE_ACTIVATIONS = ("none", "sigmoid", "softmax")
"""What the agent applies to a score tensor first: nothing (already probabilities), a sigmoid, a softmax."""


@dataclass(frozen=True)
class ToothIndexOutput:
    """A per-box tooth output ``[N]``: index ``k`` is the tooth ``labels_fdi[k]``; an index outside it, none."""

    name: str
    labels_fdi: tuple[str, ...]


@dataclass(frozen=True)
class DetectionOutput:
    """An instance detector's outputs: ``boxes [N, 4]`` with either ``scores [N]`` and ``classes [N]`` (indices into
    the finding classes; a negative index marks a padding row) or ``class_scores [N, C]`` (score and class are the
    row's maximum and its column). With ``nms`` the agent suppresses, per class, boxes overlapping a more confident
    one by IoU >= ``iou_threshold`` (for a model that does not do NMS itself)."""

    boxes: str
    box_format: str = "xyxy"
    box_units: str = "pixels"
    scores: str | None = None
    classes: str | None = None
    class_scores: str | None = None
    score_activation: str = "none"
    nms: bool = False
    iou_threshold: float = 0.5
    tooth: ToothIndexOutput | None = None
    """The model's own tooth per box, when it has one; else the tooth comes from the tooth segmentation."""
    untoothed: bool = False
    """True: the bundle has no tooth source and its findings are reported without a tooth (declared, not assumed)."""


@dataclass(frozen=True)
class ToothClassificationOutput:
    """A per-tooth classifier's output ``[T, K]``: row ``t`` is the tooth ``teeth_fdi[t]``, column ``k`` the finding
    kind ``columns[k]`` (``""``: a column that is no finding, e.g. healthy). Where each tooth is comes from
    ``boxes [T, 4]`` when given, else from the tooth segmentation, else the finding spans the image."""

    name: str
    teeth_fdi: tuple[str, ...]
    columns: tuple[str, ...]
    activation: str = "sigmoid"
    boxes: str | None = None
    box_format: str = "xyxy"
    box_units: str = "pixels"


@dataclass(frozen=True)
class GoldenSpec:
    """One golden-vector file and the tolerance its outputs must meet."""

    file: str
    atol: float


@dataclass(frozen=True)
class CropInput:
    """The second network's input in a two-stage bundle: one crop per tooth (:mod:`edge.pipeline.crops`).

    ``float32 [N, 1, height, width]``, upright and crown first, reaching ``crown_margin`` of the tooth's length
    beyond its crown and ``apex_margin`` beyond its apex, windowed and normalised as the first network's input.
    """

    name: str
    height: int
    width: int
    crown_margin: float
    apex_margin: float


@dataclass(frozen=True)
class CropStage:
    """A two-stage bundle's second network (the manifest's ``crops`` block): findings per tooth crop.

    Outputs ``masks`` ``[N, K, h, w]`` (logits, one sigmoid per finding class in manifest order, at a whole
    fraction of the crop) and ``present`` ``[N, K]`` (logits: whether the crop's tooth has the finding). The
    first network then gives the teeth only; its ``findings`` output, if any, is not read.
    """

    file: str
    input: CropInput
    masks: str
    present: str
    golden: tuple[GoldenSpec, ...]
    variants: tuple[Variant, ...] = ()


VARIANT_PRECISIONS = ("fp16", "int8")
"""What a variant may be: a lower-precision encoding of the bundle's network."""


@dataclass(frozen=True)
class Variant:
    """The bundle's network encoded another way (e.g. INT8-quantised), for the backend kinds listed.

    A backend that can run it loads it beside ``model.onnx``, keeps whichever passes its own golden vectors and is
    faster there, and reports the variant's ``precision`` with every result.
    """

    precision: str
    file: str
    backends: tuple[str, ...]
    """Backend kinds (``onnxruntime-cpu`` ...) that may run it."""
    golden: tuple[GoldenSpec, ...]


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated ``manifest.json``."""

    format: int
    id: str
    version: str
    task: str
    requires_agent: str
    clinical: bool
    description: str
    input: InputSpec
    teeth: TeethOutput | None
    """The tooth segmentation output; required for ``segmentation``, optional for the other output kinds."""
    findings: FindingsOutput
    files: Mapping[str, str]
    """Relative path -> sha256 hex of every file in the bundle except the manifest."""
    golden: tuple[GoldenSpec, ...]
    variants: tuple[Variant, ...] = ()
    accepts: Accepts | None = None
    """Which images the bundle is for; None: the manifest has no ``accepts`` block (see :func:`accepts_of`)."""
    decoder: DetectionOutput | ToothClassificationOutput | None = None
    """How to read the outputs besides ``teeth``: None for segmentation (``findings`` masks)."""
    crops: CropStage | None = None
    """A two-stage bundle's second network (findings on tooth crops), or None."""

    @property
    def output_kind(self) -> str:
        """``segmentation``, ``detection`` or ``tooth_classification`` (:data:`OUTPUT_KINDS`)."""
        if isinstance(self.decoder, DetectionOutput):
            return "detection"
        if isinstance(self.decoder, ToothClassificationOutput):
            return "tooth_classification"
        return "segmentation"


def accepts_of(manifest: Manifest) -> Accepts:
    """What ``manifest`` accepts: its ``accepts`` block, else :data:`LEGACY_PANORAMIC` narrowed to its modalities.

    Raises :class:`BundleError` for a manifest without an ``accepts`` block none of whose modalities carries a
    panoramic (the agent cannot tell what such a bundle is for).
    """
    if manifest.accepts is not None:
        return manifest.accepts
    modalities = tuple(m for m in LEGACY_PANORAMIC.modalities if m in manifest.input.modalities)
    if not modalities:
        raise BundleError(
            f"manifest: no accepts block, and input.modalities ({', '.join(manifest.input.modalities)}) has none "
            f"of {', '.join(LEGACY_PANORAMIC.modalities)}: declare which images the bundle is for"
        )
    return dataclasses.replace(LEGACY_PANORAMIC, modalities=modalities)


def describe_accepts(accepts: Accepts) -> str:
    """One line saying what ``accepts`` takes, for people (``btt-edge model verify``)."""
    spacing = accepts.pixel_spacing_mm
    text = (
        f"{'/'.join(accepts.views)} {'/'.join(accepts.modalities)}, {'/'.join(accepts.photometric)}, "
        f"{accepts.rows[0]}-{accepts.rows[1]} rows x {accepts.columns[0]}-{accepts.columns[1]} columns, "
        f"width/height {accepts.aspect[0]:g}-{accepts.aspect[1]:g}"
        + ("" if spacing is None else f", pixel spacing {spacing[0]:g}-{spacing[1]:g} mm")
    )
    return text if accepts.declared else f"{text} (no accepts block: read as a panoramic model)"


def describe_outputs(manifest: Manifest) -> str:
    """One line saying what ``manifest``'s outputs are and how they become findings (``btt-edge model verify``)."""
    kinds = "/".join(c.kind for c in manifest.findings.classes)
    decoder = manifest.decoder
    teeth = "" if manifest.teeth is None else f", {len(manifest.teeth.labels_fdi)}-tooth segmentation"
    if isinstance(decoder, DetectionOutput):
        suppression = f"NMS by the agent (IoU {decoder.iou_threshold:g})" if decoder.nms else "NMS by the model"
        if decoder.tooth is not None:
            source = "the model's tooth per box"
        elif manifest.teeth is not None:
            source = "the tooth segmentation"
        else:
            source = "none (untoothed)"
        detail = f"boxes {decoder.box_format} in {decoder.box_units}, {suppression}, tooth from {source}"
    elif isinstance(decoder, ToothClassificationOutput):
        detail = f"{len(decoder.teeth_fdi)} teeth x {len(decoder.columns)} columns ({decoder.activation}){teeth}"
    else:
        detail = f"finding masks{teeth}"
    return f"{manifest.output_kind}: {detail}; classes {kinds}"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest and the bytes of every file, as hashed."""

    manifest: Manifest
    files: Mapping[str, bytes]
    source: str
    """Where it was loaded from (for messages)."""
    variant: Variant | None = None
    """The network this view of the bundle runs: None for its stage's own network, else one of its variants."""
    stage: str = "image"
    """``image``: the first network (``model.onnx``); ``crops``: a two-stage bundle's second (:meth:`crop_stage`)."""

    @property
    def network_file(self) -> str:
        """The file of the network this view runs."""
        if self.variant is not None:
            return self.variant.file
        if self.stage == "crops":
            assert self.manifest.crops is not None
            return self.manifest.crops.file
        return MODEL_NAME

    def crop_stage(self) -> Bundle:
        """The view of a two-stage bundle's second network, as a bundle a backend loads: its manifest's input,
        golden vectors and variants are the crop stage's. Raises :class:`BundleError` for a one-stage bundle."""
        if self.stage == "crops":
            return self
        stage = self.manifest.crops
        if stage is None:
            raise BundleError(f"{self.manifest.id}: the bundle has one network, no crop stage")
        spec = dataclasses.replace(
            self.manifest.input, name=stage.input.name, height=stage.input.height, width=stage.input.width
        )
        manifest = dataclasses.replace(self.manifest, input=spec, golden=stage.golden, variants=stage.variants)
        return dataclasses.replace(self, manifest=manifest, variant=None, stage="crops")

    @property
    def model_bytes(self) -> bytes:
        """The ONNX network, verified."""
        return self.files[self.network_file]

    @property
    def sha256(self) -> str:
        """Hash of the network, the key for caches (e.g. TensorRT engines)."""
        return self.manifest.files[self.network_file]

    @property
    def golden(self) -> tuple[GoldenSpec, ...]:
        """The golden vectors of the network this view runs."""
        return self.manifest.golden if self.variant is None else self.variant.golden

    @property
    def precision(self) -> str:
        """``fp32`` for ``model.onnx``, else the variant's precision."""
        return "fp32" if self.variant is None else self.variant.precision

    def network_for(self, backend: str, precision: str) -> Bundle:
        """The view whose network a ``backend`` computing in ``precision`` runs (its variant, else the bundle's)."""
        networks = self.networks_for(backend)
        return next((n for n in networks if n.precision == precision), networks[0])

    def networks_for(self, backend: str) -> tuple[Bundle, ...]:
        """This bundle's own network first, then a view per variant that ``backend`` (a kind) may run."""
        base = dataclasses.replace(self, variant=None)
        return (base, *(dataclasses.replace(self, variant=v) for v in self.manifest.variants if backend in v.backends))


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _version_tuple(text: str) -> tuple[int, int, int]:
    major, minor, patch = ([int(p) for p in text.split(".")] + [0, 0])[:3]
    return major, minor, patch


def version_satisfies(version: str, spec: str) -> bool:
    """True when ``version`` (``1.2.3``) meets every comma-separated clause of ``spec`` (``>=0.1,<1``).

    Raises ``ValueError`` for a clause or version it cannot read.
    """
    if not _VERSION_RE.match(version):
        raise ValueError(f"not a version: {version!r}")
    have = _version_tuple(version)
    for clause in spec.split(","):
        match = _CLAUSE_RE.match(clause)
        if match is None:
            raise ValueError(f"not a version clause: {clause.strip()!r}")
        op, want = match.group(1), _version_tuple(match.group(2))
        ok = {
            ">=": have >= want,
            "<=": have <= want,
            ">": have > want,
            "<": have < want,
            "==": have == want,
            "!=": have != want,
        }[op]
        if not ok:
            return False
    return True


class _Reader:
    """Typed access to one JSON object, with errors that name the key path."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, dict):
            raise BundleError(f"manifest: {where or 'top level'} must be an object")
        self.doc: dict[str, Any] = doc
        self.where = where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.doc:
            raise BundleError(f"manifest: missing {self._path(key)}")
        value = self.doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise BundleError(f"manifest: {self._path(key)} has the wrong type")
        return value

    def string(self, key: str) -> str:
        value: str = self.get(key, str)
        if not value:
            raise BundleError(f"manifest: {self._path(key)} is empty")
        return value

    def number(self, key: str, lo: float, hi: float) -> float:
        value = float(self.get(key, (int, float)))
        if not lo <= value <= hi:
            raise BundleError(f"manifest: {self._path(key)} = {value} is outside [{lo}, {hi}]")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        value: int = self.get(key, int)
        if not lo <= value <= hi:
            raise BundleError(f"manifest: {self._path(key)} = {value} is outside [{lo}, {hi}]")
        return value

    def child(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), self._path(key))

    def items(self, key: str) -> list[Any]:
        value: list[Any] = self.get(key, list)
        return value


def _parse_input(r: _Reader) -> InputSpec:
    window = r.items("window_percentiles")
    if len(window) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window):
        raise BundleError("manifest: input.window_percentiles must be two numbers")
    lo, hi = float(window[0]), float(window[1])
    if not 0.0 <= lo < hi <= 100.0:
        raise BundleError(f"manifest: input.window_percentiles {window} must satisfy 0 <= low < high <= 100")
    modalities = r.items("modalities")
    if not modalities or not all(isinstance(m, str) and m for m in modalities):
        raise BundleError("manifest: input.modalities must be a non-empty list of modality codes")
    std = r.number("std", 0.0, 1e6)
    if std == 0.0:
        raise BundleError("manifest: input.std must be positive")
    return InputSpec(
        name=r.string("name"),
        height=r.integer("height", 16, 8192),
        width=r.integer("width", 16, 8192),
        channels=r.integer("channels", 1, 4),
        window_percentiles=(lo, hi),
        mean=r.number("mean", -1e6, 1e6),
        std=std,
        modalities=tuple(modalities),
    )


def _names(r: _Reader, key: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    values = r.items(key)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise BundleError(f"manifest: {r._path(key)} must be a non-empty list of names")
    if len(set(values)) != len(values):
        raise BundleError(f"manifest: {r._path(key)} repeats a name")
    for value in values:
        if allowed is not None and value not in allowed:
            raise BundleError(f"manifest: {r._path(key)} has {value!r}, not one of {', '.join(allowed)}")
    return tuple(values)


def _range(r: _Reader, key: str, lo: float, hi: float, *, integer: bool) -> tuple[Any, Any]:
    pair = r.items(key)
    kinds = (int,) if integer else (int, float)
    if len(pair) != 2 or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in pair):
        raise BundleError(f"manifest: {r._path(key)} must be two {'integers' if integer else 'numbers'} [low, high]")
    low, high = (v if integer else float(v) for v in pair)
    if not lo <= low <= high <= hi:
        raise BundleError(f"manifest: {r._path(key)} {pair} must satisfy {lo} <= low <= high <= {hi}")
    return low, high


def _parse_accepts(r: _Reader, spec: InputSpec) -> Accepts:
    known = {"views", "modalities", "photometric", "rows", "columns", "aspect", "pixel_spacing_mm"}
    unknown = sorted(set(r.doc) - known)
    if unknown:
        raise BundleError(f"manifest: {r._path(unknown[0])} is not an accepts field ({', '.join(sorted(known))})")
    modalities = _names(r, "modalities")
    for modality in modalities:
        if modality not in spec.modalities:
            raise BundleError(f"manifest: accepts.modalities has {modality}, which input.modalities does not list")
    default = Accepts(views=(), modalities=())
    return Accepts(
        views=_names(r, "views", VIEWS),
        modalities=modalities,
        photometric=_names(r, "photometric", PHOTOMETRICS) if "photometric" in r.doc else default.photometric,
        rows=_range(r, "rows", 1, 65535, integer=True) if "rows" in r.doc else default.rows,
        columns=_range(r, "columns", 1, 65535, integer=True) if "columns" in r.doc else default.columns,
        aspect=_range(r, "aspect", 0.01, 100.0, integer=False) if "aspect" in r.doc else default.aspect,
        pixel_spacing_mm=(
            _range(r, "pixel_spacing_mm", 0.001, 10.0, integer=False) if "pixel_spacing_mm" in r.doc else None
        ),
    )


def _parse_class(r: _Reader) -> FindingClass:
    kind = r.string("kind")
    if not _KIND_RE.match(kind):
        raise BundleError(f"manifest: {r.where}.kind {kind!r} is not a code name (lower case, digits, _)")
    code = r.child("code")
    threshold = r.number("threshold", 0.0, 1.0)
    if threshold in (0.0, 1.0):
        raise BundleError(f"manifest: {r.where}.threshold must be strictly between 0 and 1")
    return FindingClass(
        kind=kind,
        code=Code(scheme=code.string("scheme"), value=code.string("value"), meaning=code.string("meaning")),
        threshold=threshold,
        min_area_px=r.integer("min_area_px", 0, 1 << 30) if "min_area_px" in r.doc else 0,
    )


def _known(r: _Reader, known: set[str]) -> None:
    """Refuse a key ``r``'s block does not define, so that a misspelt one is never silently ignored."""
    unknown = sorted(set(r.doc) - known)
    if unknown:
        raise BundleError(f"manifest: {r._path(unknown[0])} is not a field of {r.where} ({', '.join(sorted(known))})")


def _choice(r: _Reader, key: str, allowed: tuple[str, ...], default: str) -> str:
    if key not in r.doc:
        return default
    value = r.string(key)
    if value not in allowed:
        raise BundleError(f"manifest: {r._path(key)} {value!r} is not one of {', '.join(allowed)}")
    return value


def _optional_name(r: _Reader, key: str) -> str | None:
    return r.string(key) if key in r.doc else None


def _fdi_list(r: _Reader, key: str) -> tuple[str, ...]:
    labels = r.items(key)
    if not labels or not all(isinstance(label, str) for label in labels):
        raise BundleError(f"manifest: {r._path(key)} must be a non-empty list of FDI numbers")
    for label in labels:
        try:
            fdi_to_universal(label)
        except ValueError:
            raise BundleError(f"manifest: {r._path(key)} has {label!r}, not an FDI tooth number") from None
    if len(set(labels)) != len(labels):
        raise BundleError(f"manifest: {r._path(key)} repeats a tooth")
    return tuple(labels)


def _distinct(where: str, names: list[str | None]) -> None:
    given = [n for n in names if n is not None]
    if len(set(given)) != len(given):
        raise BundleError(f"manifest: {where} names one tensor twice ({', '.join(given)})")


def _parse_detection(r: _Reader, teeth: TeethOutput | None) -> DetectionOutput:
    known = {"boxes", "box_format", "box_units", "scores", "classes", "class_scores", "score_activation", "nms"}
    _known(r, known | {"iou_threshold", "tooth", "untoothed"})
    scores, classes, class_scores = (_optional_name(r, k) for k in ("scores", "classes", "class_scores"))
    if class_scores is None and (scores is None or classes is None):
        raise BundleError(f"manifest: {r.where} needs scores and classes ([N] each), or class_scores ([N, C])")
    if class_scores is not None and (scores is not None or classes is not None):
        raise BundleError(f"manifest: {r.where} gives class_scores and scores/classes: give one or the other")
    activation = _choice(r, "score_activation", SCORE_ACTIVATIONS, "none")
    if activation == "softmax" and class_scores is None:
        raise BundleError(f"manifest: {r.where}.score_activation softmax needs class_scores ([N, C])")
    nms = bool(r.get("nms", bool)) if "nms" in r.doc else False
    if nms and "iou_threshold" not in r.doc:
        raise BundleError(f"manifest: {r.where}.nms is true but iou_threshold is missing")
    iou = r.number("iou_threshold", 0.0, 1.0) if "iou_threshold" in r.doc else 0.5
    if not 0.0 < iou < 1.0:
        raise BundleError(f"manifest: {r.where}.iou_threshold must be strictly between 0 and 1")
    tooth = None
    if "tooth" in r.doc:
        t = r.child("tooth")
        _known(t, {"name", "labels_fdi"})
        tooth = ToothIndexOutput(name=t.string("name"), labels_fdi=_fdi_list(t, "labels_fdi"))
    untoothed = bool(r.get("untoothed", bool)) if "untoothed" in r.doc else False
    if teeth is None and tooth is None and not untoothed:
        raise BundleError(
            f"manifest: {r.where} has no tooth source: declare outputs.teeth (a tooth segmentation), "
            f"{r.where}.tooth (the model's tooth per box), or untoothed: true (findings without a tooth)"
        )
    boxes = r.string("boxes")
    _distinct(
        r.where,
        [
            boxes,
            scores,
            classes,
            class_scores,
            None if tooth is None else tooth.name,
            None if teeth is None else teeth.name,
        ],
    )
    return DetectionOutput(
        boxes=boxes,
        box_format=_choice(r, "box_format", BOX_FORMATS, "xyxy"),
        box_units=_choice(r, "box_units", BOX_UNITS, "pixels"),
        scores=scores,
        classes=classes,
        class_scores=class_scores,
        score_activation=activation,
        nms=nms,
        iou_threshold=iou,
        tooth=tooth,
        untoothed=untoothed,
    )


def _parse_tooth_classification(
    r: _Reader, teeth: TeethOutput | None, kinds: tuple[str, ...]
) -> ToothClassificationOutput:
    _known(r, {"name", "teeth_fdi", "columns", "activation", "boxes", "box_format", "box_units"})
    columns = r.items("columns")
    if not columns or not all(isinstance(c, str) for c in columns):
        raise BundleError(f'manifest: {r.where}.columns must be a list of finding kinds ("" for no finding)')
    for column in columns:
        if column and column not in kinds:
            raise BundleError(f"manifest: {r.where}.columns has {column!r}, which outputs.findings.classes lacks")
    named = [c for c in columns if c]
    if len(set(named)) != len(named) or set(named) != set(kinds):
        raise BundleError(f"manifest: {r.where}.columns must name every finding class exactly once")
    name, boxes = r.string("name"), _optional_name(r, "boxes")
    _distinct(r.where, [name, boxes, None if teeth is None else teeth.name])
    return ToothClassificationOutput(
        name=name,
        teeth_fdi=_fdi_list(r, "teeth_fdi"),
        columns=tuple(columns),
        activation=_choice(r, "activation", SCORE_ACTIVATIONS, "sigmoid"),
        boxes=boxes,
        box_format=_choice(r, "box_format", BOX_FORMATS, "xyxy"),
        box_units=_choice(r, "box_units", BOX_UNITS, "pixels"),
    )


def _parse_crops(r: _Reader, files: Mapping[str, str]) -> CropStage:
    _known(r, {"file", "input", "outputs", "golden", "variants"})
    name = r.string("file")
    if name not in files:
        raise BundleError(f"manifest: crops.file {name!r} is not listed in files")
    i = r.child("input")
    _known(i, {"name", "height", "width", "crown_margin", "apex_margin"})
    crop = CropInput(
        name=i.string("name"),
        height=i.integer("height", 16, 4096),
        width=i.integer("width", 16, 4096),
        crown_margin=i.number("crown_margin", 0.0, 2.0),
        apex_margin=i.number("apex_margin", 0.0, 2.0),
    )
    o = r.child("outputs")
    _known(o, {"masks", "present"})
    masks, present = o.string("masks"), o.string("present")
    if masks == present:
        raise BundleError("manifest: crops.outputs.masks and crops.outputs.present must differ")
    golden = _parse_golden(r, files)
    if not golden:
        raise BundleError("manifest: crops has no golden vectors (the second network must prove itself too)")
    variants = tuple(
        _parse_variant(_Reader(item, f"crops.variants[{k}]"), files)
        for k, item in enumerate(r.items("variants") if "variants" in r.doc else [])
    )
    return CropStage(file=name, input=crop, masks=masks, present=present, golden=golden, variants=variants)


def _parse_outputs(
    r: _Reader, *, two_stage: bool = False
) -> tuple[TeethOutput | None, FindingsOutput, DetectionOutput | ToothClassificationOutput | None]:
    kind = _choice(r, "kind", OUTPUT_KINDS, "segmentation")
    if two_stage and kind != "segmentation":
        raise BundleError(f"manifest: a bundle with a crop stage finds its teeth by segmentation, not {kind}")
    _known(r, {"kind", "teeth", "findings"} | ({kind} - {"segmentation"}))
    teeth = None
    if kind == "segmentation" or "teeth" in r.doc:
        t = r.child("teeth")
        teeth = TeethOutput(name=t.string("name"), labels_fdi=_fdi_list(t, "labels_fdi"))
    findings = r.child("findings")
    raw_classes = findings.items("classes")
    classes = tuple(_parse_class(_Reader(c, f"outputs.findings.classes[{i}]")) for i, c in enumerate(raw_classes))
    if not classes:
        raise BundleError("manifest: outputs.findings.classes is empty")
    kinds = tuple(c.kind for c in classes)
    if len(set(kinds)) != len(kinds):
        raise BundleError("manifest: outputs.findings.classes repeats a kind")
    if kind == "detection":
        return teeth, FindingsOutput("", classes), _parse_detection(r.child("detection"), teeth)
    if kind == "tooth_classification":
        decoder = _parse_tooth_classification(r.child("tooth_classification"), teeth, kinds)
        return teeth, FindingsOutput("", classes), decoder
    findings_name = findings.string("name") if not two_stage or "name" in findings.doc else ""
    if teeth is not None and teeth.name == findings_name:
        raise BundleError("manifest: outputs.teeth.name and outputs.findings.name must differ")
    return teeth, FindingsOutput(name=findings_name, classes=classes), None


def _check_relative(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or name != str(path) or name == MANIFEST_NAME:
        raise BundleError(f"manifest: files has {name!r}, which is not a plain relative path inside the bundle")


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate ``manifest.json`` (pure). Raises :class:`BundleError` naming the first problem."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"manifest: not valid JSON: {exc}") from exc
    r = _Reader(doc, "")
    fmt = r.get("format", int)
    if fmt != FORMAT:
        raise BundleError(f"manifest: format {fmt} is not supported (this agent reads format {FORMAT})")
    version = r.string("version")
    if not re.match(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$", version):
        raise BundleError(f"manifest: version {version!r} is not a semantic version")
    requires = r.string("requires_agent")
    try:
        version_satisfies("0", requires)
    except ValueError as exc:
        raise BundleError(f"manifest: requires_agent {requires!r}: {exc}") from None
    files_doc = r.child("files").doc
    files: dict[str, str] = {}
    for name, digest in files_doc.items():
        _check_relative(name)
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise BundleError(f"manifest: files[{name!r}] is not a lower-case sha256 hex digest")
        files[name] = digest
    if MODEL_NAME not in files:
        raise BundleError(f"manifest: files does not list {MODEL_NAME}")
    golden = _parse_golden(r, files)
    variants = tuple(
        _parse_variant(_Reader(item, f"variants[{i}]"), files)
        for i, item in enumerate(r.items("variants") if "variants" in r.doc else [])
    )
    spec = _parse_input(r.child("input"))
    crops = _parse_crops(r.child("crops"), files) if "crops" in r.doc else None
    networks = [MODEL_NAME, *(v.file for v in variants)]
    if crops is not None:
        networks += [crops.file, *(v.file for v in crops.variants)]
    if len(set(networks)) != len(networks):
        raise BundleError("manifest: two networks (model.onnx, the crop stage and the variants) share a file")
    teeth, findings, decoder = _parse_outputs(r.child("outputs"), two_stage=crops is not None)
    accepts = _parse_accepts(r.child("accepts"), spec) if "accepts" in r.doc else None
    manifest = Manifest(
        format=fmt,
        id=r.string("id"),
        version=version,
        task=r.string("task"),
        requires_agent=requires,
        clinical=r.get("clinical", bool),
        description=r.get("description", str),
        input=spec,
        teeth=teeth,
        findings=findings,
        files=MappingProxyType(files),
        golden=golden,
        variants=variants,
        accepts=accepts,
        decoder=decoder,
        crops=crops,
    )
    accepts_of(manifest)  # a manifest without accepts must be one the agent can read as a panoramic model
    return manifest


def _parse_golden(r: _Reader, files: Mapping[str, str]) -> tuple[GoldenSpec, ...]:
    golden: list[GoldenSpec] = []
    for i, item in enumerate(r.items("golden")):
        g = _Reader(item, f"{r._path('golden')}[{i}]")
        name = g.string("file")
        if name not in files:
            raise BundleError(f"manifest: {g.where}.file {name!r} is not listed in files")
        golden.append(GoldenSpec(file=name, atol=g.number("atol", 0.0, 1e6)))
    return tuple(golden)


def _parse_variant(r: _Reader, files: Mapping[str, str]) -> Variant:
    precision = r.string("precision")
    if precision not in VARIANT_PRECISIONS:
        raise BundleError(f"manifest: {r.where}.precision {precision!r} is not one of {', '.join(VARIANT_PRECISIONS)}")
    name = r.string("file")
    if name not in files:
        raise BundleError(f"manifest: {r.where}.file {name!r} is not listed in files")
    backends = r.items("backends")
    if not backends or not all(isinstance(b, str) and b for b in backends):
        raise BundleError(f"manifest: {r.where}.backends must be a non-empty list of backend kinds")
    golden = _parse_golden(r, files)
    if not golden:
        raise BundleError(f"manifest: {r.where} has no golden vectors (a variant must prove itself like the model)")
    return Variant(precision=precision, file=name, backends=tuple(backends), golden=golden)


def _golden_json(golden: tuple[GoldenSpec, ...]) -> list[dict[str, Any]]:
    return [{"file": g.file, "atol": g.atol} for g in golden]


def _accepts_json(accepts: Accepts) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "views": list(accepts.views),
        "modalities": list(accepts.modalities),
        "photometric": list(accepts.photometric),
        "rows": list(accepts.rows),
        "columns": list(accepts.columns),
        "aspect": list(accepts.aspect),
    }
    if accepts.pixel_spacing_mm is not None:
        doc["pixel_spacing_mm"] = list(accepts.pixel_spacing_mm)
    return doc


def _outputs_json(manifest: Manifest) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if manifest.decoder is not None:
        doc["kind"] = manifest.output_kind
    if manifest.teeth is not None:
        doc["teeth"] = {"name": manifest.teeth.name, "labels_fdi": list(manifest.teeth.labels_fdi)}
    decoder = manifest.decoder
    if isinstance(decoder, DetectionOutput):
        block: dict[str, Any] = {"boxes": decoder.boxes, "box_format": decoder.box_format}
        block["box_units"] = decoder.box_units
        for key in ("scores", "classes", "class_scores"):
            if getattr(decoder, key) is not None:
                block[key] = getattr(decoder, key)
        block.update(score_activation=decoder.score_activation, nms=decoder.nms, iou_threshold=decoder.iou_threshold)
        if decoder.tooth is not None:
            block["tooth"] = {"name": decoder.tooth.name, "labels_fdi": list(decoder.tooth.labels_fdi)}
        block["untoothed"] = decoder.untoothed
        doc["detection"] = block
    elif isinstance(decoder, ToothClassificationOutput):
        block = {
            "name": decoder.name,
            "teeth_fdi": list(decoder.teeth_fdi),
            "columns": list(decoder.columns),
            "activation": decoder.activation,
        }
        if decoder.boxes is not None:
            block.update(boxes=decoder.boxes, box_format=decoder.box_format, box_units=decoder.box_units)
        doc["tooth_classification"] = block
    classes = [
        {
            "kind": c.kind,
            "code": {"scheme": c.code.scheme, "value": c.code.value, "meaning": c.code.meaning},
            "threshold": c.threshold,
            "min_area_px": c.min_area_px,
        }
        for c in manifest.findings.classes
    ]
    named = decoder is None and manifest.findings.name
    doc["findings"] = {"name": manifest.findings.name, "classes": classes} if named else {"classes": classes}
    return doc


def _crops_json(stage: CropStage) -> dict[str, Any]:
    crop = stage.input
    doc: dict[str, Any] = {
        "file": stage.file,
        "input": {
            "name": crop.name,
            "height": crop.height,
            "width": crop.width,
            "crown_margin": crop.crown_margin,
            "apex_margin": crop.apex_margin,
        },
        "outputs": {"masks": stage.masks, "present": stage.present},
        "golden": _golden_json(stage.golden),
    }
    if stage.variants:
        doc["variants"] = [_variant_json(v) for v in stage.variants]
    return doc


def _variant_json(v: Variant) -> dict[str, Any]:
    return {"precision": v.precision, "file": v.file, "backends": list(v.backends), "golden": _golden_json(v.golden)}


def manifest_to_json(manifest: Manifest) -> dict[str, Any]:
    """The JSON document of a manifest (the inverse of :func:`parse_manifest`)."""
    spec = manifest.input
    return {
        "format": manifest.format,
        "id": manifest.id,
        "version": manifest.version,
        "task": manifest.task,
        "requires_agent": manifest.requires_agent,
        "clinical": manifest.clinical,
        "description": manifest.description,
        "input": {
            "name": spec.name,
            "height": spec.height,
            "width": spec.width,
            "channels": spec.channels,
            "window_percentiles": list(spec.window_percentiles),
            "mean": spec.mean,
            "std": spec.std,
            "modalities": list(spec.modalities),
        },
        **(
            {"accepts": _accepts_json(manifest.accepts)}
            if manifest.accepts is not None and manifest.accepts.declared
            else {}
        ),
        "outputs": _outputs_json(manifest),
        "files": dict(sorted(manifest.files.items())),
        "golden": _golden_json(manifest.golden),
        **({"variants": [_variant_json(v) for v in manifest.variants]} if manifest.variants else {}),
        **({"crops": _crops_json(manifest.crops)} if manifest.crops is not None else {}),
    }


def parse_bundle(files: Mapping[str, bytes], *, agent_version: str = AGENT_VERSION, source: str = "") -> Bundle:
    """Verify a bundle given as ``relative path -> bytes`` (pure).

    Refuses, with the reason: a missing or invalid manifest, an agent version outside ``requires_agent``, a listed
    file that is missing or whose sha256 differs, and a file that the manifest does not list.
    """
    where = f"bundle {source}: " if source else "bundle: "
    if MANIFEST_NAME not in files:
        raise BundleError(f"{where}no {MANIFEST_NAME}")
    try:
        manifest = parse_manifest(files[MANIFEST_NAME])
    except BundleError as exc:
        raise BundleError(f"{where}{exc}") from None
    if not version_satisfies(agent_version, manifest.requires_agent):
        raise BundleError(
            f"{where}{manifest.id} {manifest.version} requires agent {manifest.requires_agent}; "
            f"this agent is {agent_version}"
        )
    for name, digest in manifest.files.items():
        if name not in files:
            raise BundleError(f"{where}{name} is listed in the manifest but missing")
        actual = sha256_hex(files[name])
        if actual != digest:
            raise BundleError(f"{where}{name} has sha256 {actual}, the manifest says {digest} (tampered or corrupt)")
    extra = sorted(set(files) - set(manifest.files) - {MANIFEST_NAME})
    if extra:
        raise BundleError(f"{where}{', '.join(extra)} not listed in the manifest")
    return Bundle(
        manifest=manifest,
        files=MappingProxyType({name: files[name] for name in manifest.files}),
        source=source,
    )


def _read_directory(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise BundleError(f"bundle {root}: {rel} is a symbolic link; bundles hold plain files only")
        if path.is_dir():
            continue
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise BundleError(f"bundle {root}: {rel} is larger than {_MAX_FILE_BYTES} bytes")
        files[rel] = path.read_bytes()
    return files


def _read_archive(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        members = [m for m in tar.getmembers() if not m.isdir()]
        names = [m.name for m in members]
        prefix = ""
        if names and all("/" in n for n in names) and len({n.split("/", 1)[0] for n in names}) == 1:
            prefix = names[0].split("/", 1)[0] + "/"
        for member in members:
            if not member.isfile():
                raise BundleError(f"bundle {path}: {member.name} is not a plain file")
            if member.size > _MAX_FILE_BYTES:
                raise BundleError(f"bundle {path}: {member.name} is larger than {_MAX_FILE_BYTES} bytes")
            fh = tar.extractfile(member)
            if fh is None:
                raise BundleError(f"bundle {path}: cannot read {member.name}")
            files[member.name.removeprefix(prefix)] = fh.read()
    return files


def load_bundle(path: Path, *, agent_version: str = AGENT_VERSION) -> Bundle:
    """Read and verify the bundle at ``path`` (a directory or a tar archive). Raises :class:`BundleError`."""
    try:
        if path.is_dir():
            files = _read_directory(path)
        elif path.is_file():
            files = _read_archive(path)
        else:
            raise BundleError(f"bundle {path}: no such directory or archive")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"bundle {path}: cannot read: {exc}") from exc
    return parse_bundle(files, agent_version=agent_version, source=str(path))


def pack_bundle(manifest: Manifest, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The files of a bundle: ``files`` plus a ``manifest.json`` listing the sha256 of each (pure)."""
    hashes = MappingProxyType({name: sha256_hex(data) for name, data in sorted(files.items())})
    doc = manifest_to_json(dataclasses.replace(manifest, files=hashes))
    packed = dict(files)
    packed[MANIFEST_NAME] = (json.dumps(doc, indent=2) + "\n").encode()
    return packed


def write_bundle(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write a packed bundle into ``directory`` durably, the manifest last."""
    for name, data in sorted(files.items()):
        if name != MANIFEST_NAME:
            atomic_write_bytes(directory / name, data)
    atomic_write_bytes(directory / MANIFEST_NAME, files[MANIFEST_NAME])

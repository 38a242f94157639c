"""Which image goes to which model: the first active bundle that accepts it, or skipped with a reason.

Three pure steps, no I/O:

* :func:`image_facts` reads what routing needs from a dataset's header (never the pixel data): Modality, SOP
  Class, Photometric Interpretation, Rows, Columns, the pixel spacing, and the attributes that name a view.
* :func:`detect_view` names the view from those attributes: PX is a panoramic and CT a CBCT unless a hint says
  otherwise; the View Code Sequence, then Image Type, then Series Description and Protocol Name may name a
  panoramic, cephalometric, bitewing, periapical or occlusal view. An intra-oral image (IO, or an intra-oral SOP
  class) that names none has no view a model can be chosen by; a DX or CR that names none is offered to the
  panoramic models only, whose size and shape ranges then decide (a panoramic is a wide landscape image that
  nothing else in a dental clinic looks like).
* :func:`route` offers the image to each bundle in order (the configured bundle first) and returns
  :class:`Accepted` for the first whose ``accepts`` (:class:`models.bundle.Accepts`) it meets, else
  :class:`Skipped` with the reason a technician reads: "no model for intra-oral bitewings (...)" when no bundle
  takes that kind of image, else what the closest bundle objected to ("image too small for ...").

A skipped image gets no findings: nothing is built or sent to the PACS for it (:mod:`edge.results` builds only
what the pipeline recorded as ``analysed``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from edge.pipeline.preprocess import pixel_spacing_mm
from models.bundle import Accepts, Bundle, accepts_of

__all__ = ["Accepted", "DetectedView", "ImageFacts", "Skipped", "detect_view", "image_facts", "route"]

_INTRA_ORAL_CLASSES = ("1.2.840.10008.5.1.4.1.1.1.3", "1.2.840.10008.5.1.4.1.1.1.3.1")
"""Digital Intra-Oral X-Ray Image Storage, for presentation and for processing."""
_PROJECTION = ("PX", "DX", "CR", "IO")
"""Modalities of 2-D dental radiographs, whose view the attributes may name."""
_DENTAL_BODY_PARTS = frozenset({"", "JAW", "MOUTH", "TEETH", "TOOTH", "HEAD", "SKULL", "FACE", "MANDIBLE", "MAXILLA",
                                "TMJ", "DENTAL", "DENTITION"})  # fmt: skip
"""Body Part Examined values (or none) a DX or CR of a dental clinic may carry; another (CHEST, HAND) is not ours."""

# (view, pattern) over upper-case text: whole words for the short forms, stems for the long ones
_HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panoramic", re.compile(r"PANORAM|ORTHOPANTOM|\b(PANO|PAN|OPG|OPT|OPTG|DPT)\b")),
    ("cephalometric", re.compile(r"CEPHALO|\bCEPH\b")),
    ("bitewing", re.compile(r"BITE ?WING")),
    ("periapical", re.compile(r"PERI ?APICAL")),
    ("occlusal", re.compile(r"OCCLUSAL")),
)
_INTRA_ORAL_HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bitewing", re.compile(r"\b(BW|BWX)\b")),
    ("periapical", re.compile(r"\b(PA|PAX)\b")),  # on a DX, "PA" is posteroanterior: read on intra-oral only
)
_INTRA_ORAL_VIEWS = ("bitewing", "periapical", "occlusal")

_LABELS = {
    "panoramic": "panoramics",
    "cephalometric": "cephalometric images",
    "bitewing": "intra-oral bitewings",
    "periapical": "intra-oral periapicals",
    "occlusal": "intra-oral occlusal images",
    "cbct": "CBCT images (modality CT)",
}


@dataclass(frozen=True)
class ImageFacts:
    """What routing reads from one image's header."""

    modality: str
    sop_class_uid: str
    photometric: str
    rows: int | None
    columns: int | None
    spacing_mm: tuple[float, float] | None
    """``(row, column)`` spacing (Pixel Spacing, else Imager Pixel Spacing), None when the image gives none."""
    has_pixels: bool
    body_part: str
    view_codes: tuple[str, ...] = ()
    """Code meanings (and values) of the View Code Sequence."""
    image_type: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()
    """Series Description and Protocol Name."""


@dataclass(frozen=True)
class DetectedView:
    """The view an image's attributes name."""

    view: str | None
    """One of :data:`models.bundle.VIEWS`; None when the attributes name none (or disagree)."""
    label: str
    """This kind of image in a skip reason: "intra-oral bitewings", "modality US images"."""
    by_shape: bool = False
    """A DX or CR naming no view: offered to panoramic models, whose size and shape ranges decide."""


@dataclass(frozen=True)
class Accepted:
    """The image goes to ``bundles[index]``."""

    index: int
    bundle: Bundle
    view: DetectedView


@dataclass(frozen=True)
class Skipped:
    """No active bundle accepts the image; ``reason`` says why, for a technician."""

    reason: str


def _text(value: Any) -> str:
    return str(value or "").strip().upper()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def image_facts(ds: Dataset) -> ImageFacts:
    """The routing facts of ``ds`` (pure; a missing or malformed attribute reads as absent)."""
    codes: list[str] = []
    for item in ds.get("ViewCodeSequence", None) or ():
        codes += [_text(item.get("CodeMeaning")), _text(item.get("CodeValue"))]
    image_type = ds.get("ImageType")
    if isinstance(image_type, str):
        image_type = [image_type]
    try:
        spacing = pixel_spacing_mm(ds)
    except (TypeError, ValueError, AttributeError):
        spacing = None
    return ImageFacts(
        modality=_text(ds.get("Modality")),
        sop_class_uid=str(ds.get("SOPClassUID", "") or "").strip(),
        photometric=_text(ds.get("PhotometricInterpretation")),
        rows=_int_or_none(ds.get("Rows")),
        columns=_int_or_none(ds.get("Columns")),
        spacing_mm=spacing,
        has_pixels="PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds,
        body_part=_text(ds.get("BodyPartExamined")),
        view_codes=tuple(c for c in codes if c),
        image_type=tuple(_text(v) for v in image_type or () if _text(v)),
        descriptions=tuple(t for t in (_text(ds.get("SeriesDescription")), _text(ds.get("ProtocolName"))) if t),
    )


def _hinted(texts: Sequence[str], intra_oral: bool) -> set[str]:
    hints = (*_HINTS, *_INTRA_ORAL_HINTS) if intra_oral else _HINTS
    views = {view for view, pattern in hints for text in texts if pattern.search(text)}
    return views & set(_INTRA_ORAL_VIEWS) if intra_oral else views


def detect_view(facts: ImageFacts) -> DetectedView:
    """The view ``facts`` name (pure): the first source that names any (View Code Sequence, Image Type, Series
    Description and Protocol Name) decides; two views named by one source name none."""
    modality = facts.modality
    if modality == "CT":
        return DetectedView("cbct", _LABELS["cbct"])
    intra_oral = modality == "IO" or facts.sop_class_uid in _INTRA_ORAL_CLASSES
    if modality not in _PROJECTION and not intra_oral:
        return DetectedView(None, f"modality {modality} images" if modality else "images that name no modality")
    if not intra_oral and facts.body_part not in _DENTAL_BODY_PARTS:
        return DetectedView(None, f"{modality} images of the {facts.body_part.lower()} (Body Part Examined)")
    for source in (facts.view_codes, facts.image_type, facts.descriptions):
        views = _hinted(source, intra_oral)
        if len(views) == 1:
            (view,) = views
            return DetectedView(view, _LABELS[view])
        if views:
            named = " and ".join(sorted(views))
            return DetectedView(None, f"{modality} images that name two views ({named})")
    if intra_oral:
        return DetectedView(None, "intra-oral images that do not name their view (bitewing, periapical, occlusal)")
    if modality == "PX":
        return DetectedView("panoramic", _LABELS["panoramic"])
    return DetectedView(None, f"{modality} images that do not name their view", by_shape=True)


def _span(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f}-{pair[1]:.{digits}f}"


def _refusal(facts: ImageFacts, detected: DetectedView, bundle: Bundle, accepts: Accepts) -> tuple[int, str] | None:
    """Why ``bundle`` does not take the image, ranked (0: not its kind of image ... 3: out of its ranges)."""
    name = bundle.manifest.id
    if facts.modality not in accepts.modalities:
        return 0, ""
    if detected.view not in accepts.views and not (detected.by_shape and "panoramic" in accepts.views):
        return 0, ""
    if facts.photometric not in accepts.photometric:
        shown = facts.photometric or "(none)"
        return 1, f"{name} reads {'/'.join(accepts.photometric)} images; this one is {shown}"
    rows, columns = facts.rows, facts.columns
    if rows is None or columns is None or rows < 1 or columns < 1:
        return 2, "the image does not give its size (Rows, Columns)"
    size = f"{rows} x {columns} pixels"
    (rlo, rhi), (clo, chi) = accepts.rows, accepts.columns
    if rows < rlo or columns < clo:
        return 3, f"image too small for {name}: {size}, it reads at least {rlo} x {clo} (rows x columns)"
    if rows > rhi or columns > chi:
        return 3, f"image too large for {name}: {size}, it reads at most {rhi} x {chi} (rows x columns)"
    aspect = columns / rows
    if not accepts.aspect[0] <= aspect <= accepts.aspect[1]:
        shape = " or ".join(_LABELS[v].removesuffix("s") for v in accepts.views)
        return 3, (
            f"image not shaped like {'an' if shape[0] in 'aeiou' else 'a'} {shape} for {name}: {size}, "
            f"width/height {aspect:.2f} (it reads {_span(accepts.aspect, 2)})"
        )
    if facts.spacing_mm is not None and accepts.pixel_spacing_mm is not None:
        lo, hi = accepts.pixel_spacing_mm
        off = [s for s in facts.spacing_mm if not (math.isfinite(s) and lo <= s <= hi)]
        if off:
            return 3, (
                f"pixel spacing {off[0]:.3f} mm is outside what {name} reads ({_span(accepts.pixel_spacing_mm, 3)} mm)"
            )
    return None


def _offer(bundle: Bundle, accepts: Accepts) -> str:
    return f"{bundle.manifest.id} ({'/'.join(accepts.views)} {'/'.join(accepts.modalities)})"


def route(facts: ImageFacts, bundles: Sequence[Bundle]) -> Accepted | Skipped:
    """The first of ``bundles`` that accepts the image of ``facts``, else why none does (pure).

    Raises :class:`~edge.errors.BundleError` only for a manifest that cannot say what it accepts (one that
    :func:`models.bundle.parse_manifest` already refuses).
    """
    if not facts.has_pixels:
        return Skipped("the file holds no image (no pixel data)")
    if not bundles:
        return Skipped("no model is active")
    detected = detect_view(facts)
    best: tuple[int, str] | None = None
    offers: list[str] = []
    for index, bundle in enumerate(bundles):
        accepts = accepts_of(bundle.manifest)
        refusal = _refusal(facts, detected, bundle, accepts)
        if refusal is None:
            return Accepted(index, bundle, detected)
        offers.append(_offer(bundle, accepts))
        if best is None or refusal[0] > best[0]:
            best = refusal
    assert best is not None
    if best[0] == 0:
        return Skipped(f"no model for {detected.label}; active: {', '.join(offers)}")
    return Skipped(best[1])

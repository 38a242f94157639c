"""Model outputs -> findings in source pixels (pure: arrays in, :class:`~dental.findings.Finding` out).

The decoder of the bundle's output kind (:mod:`edge.pipeline.decoders`: segmentation, detection, per-tooth
classification) reads the outputs into candidates in model pixels; the clinical rules live here, the same for
every kind: each candidate goes on its tooth, one finding per tooth, exclusive kinds, bone loss, and the mapping
to source pixels. A boxed candidate (a detection, a tooth's classification) keeps the tooth the model gave it, else
takes the tooth zone covering most of its box (below), else none; boxes of one kind on one tooth become one
finding (their union, the best confidence); its outline is the box, or the tooth's outline.

A segmentation model's outputs (the reference model's), for one image: ``teeth`` logits ``[1, 1 + T, H/s, W/s]``
(softmax; channel 0 is background, channel ``k`` is the tooth ``labels_fdi[k - 1]`` of the manifest; ``s`` a whole
number, 2 for the reference model) and ``findings`` logits ``[1, K, H, W]`` (independent sigmoids, one per finding
class in manifest order).

Tooth numbers follow the order of the arch (:func:`edge.pipeline.decoders.tooth_labels`). Every model pixel is
given to its nearest tooth (a Voronoi partition of the tooth labels). A finding is a connected region of one class
above the class threshold, at least ``min_area_px`` model pixels large; a region that spans several teeth' zones with a
substantial share in each (a bridge of two crowns, bone loss along a row) becomes one finding per tooth
(:data:`MIN_SHARE`). Its tooth is the zone's tooth, or none when the region lies more than
:data:`MAX_TOOTH_DISTANCE` of the model's width from every tooth. Then the clinical rules of
:mod:`edge.pipeline.clinical` keep one finding per kind per tooth and the more confident of two mutually exclusive
kinds on one tooth or in one place. Confidence is the mean probability over the
region. Boxes and outlines (the convex hull of the region) are mapped to source pixels through the letterbox
transform; areas are scaled to source pixels and to mm² with the pixel spacing when it is known.

Bone loss is measured per tooth zone along the image's vertical (a panoramic's teeth stand nearly upright): its
height is the median height of the region's columns, and the root length is the distance from the region's
coronal edge (the cemento-enamel junction, where a healthy crest sits) to the tooth's apex in the tooth output,
and a percentage is given only for a root at least :data:`MIN_ROOT_SHARE` of the tooth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from dental.findings import Finding
from dental.outline import region_outline
from dental.teeth import is_upper
from edge.errors import PipelineError
from edge.pipeline.clinical import apply_clinical_rules
from edge.pipeline.crops import CropLayout, ToothCrop, apex_row
from edge.pipeline.decoders import Box, Decoded, Region, decode
from models.bundle import Manifest

__all__ = [
    "MAX_TOOTH_DISTANCE",
    "MIN_ROOT_SHARE",
    "MIN_SHARE",
    "findings_from_crops",
    "findings_from_decoded",
    "findings_from_outputs",
]

MAX_TOOTH_DISTANCE = 0.04
"""A region farther than this fraction of the model's width from every tooth is reported without a tooth."""
MIN_ROOT_SHARE = 0.4
"""The root runs from the junction to the apex: at least this share of the tooth's length (a permanent tooth's
root is 0.55-0.65 of it; the margin is for the tooth head's outline). A bone-loss region whose coronal edge gives
a shorter root does not start at the junction, and its loss cannot be given as a percentage of the root."""
MIN_SHARE = 0.15
"""A region is split between teeth only where each tooth holds at least this share of it (and the class's minimum
area); the pixels of smaller shares go to the tooth holding the most."""


class _Transform(Protocol):
    def to_source(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
    def box_to_source(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]: ...
    @property
    def scale(self) -> tuple[float, float]: ...


def _bone_loss(
    region: npt.NDArray[np.bool_],
    tooth: npt.NDArray[np.bool_] | None,
    upper: bool,
    transform: _Transform,
    row_mm: float | None,
) -> tuple[float | None, float | None]:
    """``(bone_loss_mm, bone_loss_pct)`` of one tooth's bone-loss region (model pixels).

    The loss is the region's median column height. The percentage relates it to the root, from the region's
    coronal edge (the cemento-enamel junction, where the healthy crest sits) to the tooth's apex. A region that
    does not start at the junction (one lying near or beyond the apex) made that "root" a few pixels long, or
    negative (``abs`` hid it), and any loss 100 % of it. When the root so measured is shorter than
    :data:`MIN_ROOT_SHARE` of the tooth (or the band starts beyond the apex, or beyond the crown), the
    percentage is not given (the millimetres still are).
    """
    sub, height = _band(region)
    height_px = height / transform.scale[1]
    loss_mm = None if row_mm is None else height_px * row_mm
    if tooth is None or not tooth.any():
        return loss_mm, None
    rows = np.flatnonzero(tooth.any(axis=1))  # the whole tooth: a root tapers, the band lies along its flanks
    tooth_px = float(rows[-1] + 1 - rows[0]) / transform.scale[1]
    if upper:  # crown down, apex up: the junction is the band's lower edge
        coronal = float(np.median(sub.shape[0] - sub[::-1].argmax(axis=0)))
        root_px = (coronal - float(rows[0])) / transform.scale[1]
    else:
        coronal = float(np.median(sub.argmax(axis=0)))
        root_px = (float(rows[-1] + 1) - coronal) / transform.scale[1]
    return loss_mm, _loss_pct(height_px, root_px, tooth_px)


def _band(region: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.bool_], float]:
    """A bone-loss region's occupied columns and its median column height (the loss, in the region's pixels)."""
    sub = region[:, np.flatnonzero(region.any(axis=0))]
    return sub, float(np.median(sub.sum(axis=0)))


def _loss_pct(height: float, root: float, tooth: float) -> float | None:
    """The loss ``height`` as a percentage of the ``root`` (both in one unit), or None when the root so measured is
    shorter than :data:`MIN_ROOT_SHARE` of the ``tooth`` or longer than it (the junction is not where the band
    starts)."""
    if not MIN_ROOT_SHARE * tooth <= root <= tooth:
        return None
    return float(min(100.0, 100.0 * height / root))


def _finding(
    *,
    kind: str,
    region: npt.NDArray[np.bool_],
    window: tuple[slice, slice],
    logits: npt.NDArray[np.float32],
    zone: int,
    labels: npt.NDArray[np.intp],
    labels_fdi: tuple[str, ...],
    prepared: _Transform,
    pixel_spacing_mm: tuple[float, float] | None,
) -> Finding:
    """One finding from a region (a boolean window of the model grid at ``window``)."""
    top, left = window[0].start, window[1].start
    fdi = labels_fdi[zone - 1] if zone else None
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = (float(left + cols[0]), float(top + rows[0]), float(left + cols[-1] + 1), float(top + rows[-1] + 1))
    outline = np.asarray(region_outline(region), dtype=np.float64).reshape(-1, 2) + np.asarray([left, top])
    area_src = float(region.sum()) / (prepared.scale[0] * prepared.scale[1])
    row_mm, col_mm = pixel_spacing_mm if pixel_spacing_mm is not None else (None, None)
    loss_mm = loss_pct = None
    if kind == "bone_loss":
        full = np.zeros(labels.shape, bool)
        full[window] = region
        tooth = labels == zone if zone else None
        loss_mm, loss_pct = _bone_loss(full, tooth, fdi is not None and is_upper(fdi), prepared, row_mm)
    probs = 1.0 / (1.0 + np.exp(-logits[window][region].astype(np.float64)))
    return Finding(
        kind=kind,
        tooth_fdi=fdi,
        confidence=min(1.0, max(0.0, float(probs.mean()))),
        bbox=prepared.box_to_source(box),
        polygon=tuple((float(x), float(y)) for x, y in prepared.to_source(outline)),
        area_px=round(area_src),
        area_mm2=None if row_mm is None or col_mm is None else area_src * row_mm * col_mm,
        bone_loss_mm=loss_mm,
        bone_loss_pct=loss_pct,
    )


def _zones(labels: npt.NDArray[np.intp] | None) -> npt.NDArray[np.intp] | None:
    """Every model pixel given to its nearest tooth, none beyond :data:`MAX_TOOTH_DISTANCE` of the width."""
    if labels is None:
        return None
    if not labels.any():
        return np.zeros_like(labels)
    distance, (near_r, near_c) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    zones: npt.NDArray[np.intp] = labels[near_r, near_c]
    zones[distance > MAX_TOOTH_DISTANCE * labels.shape[1]] = 0
    return zones


def _region_findings(
    region: Region,
    zones: npt.NDArray[np.intp],
    decoded: Decoded,
    prepared: _Transform,
    pixel_spacing_mm: tuple[float, float] | None,
) -> list[Finding]:
    """One finding per tooth zone holding a substantial share of ``region`` (:data:`MIN_SHARE`)."""
    assert decoded.labels is not None
    window, whole = region.window, region.mask
    total = int(whole.sum())
    local_zones = zones[window]
    counts = np.bincount(local_zones[whole], minlength=len(decoded.labels_fdi) + 1)
    floor = max(region.min_area_px, MIN_SHARE * total)
    major = [int(z) for z in np.flatnonzero(counts >= floor)] or [int(counts.argmax())]
    largest = max(major, key=lambda z: int(counts[z]))
    stray = whole & ~np.isin(local_zones, major)
    found: list[Finding] = []
    for zone in major:
        part = whole & (local_zones == zone)
        if zone == largest:
            part |= stray
        found.append(
            _finding(
                kind=region.kind,
                region=part,
                window=window,
                logits=region.logits,
                zone=zone,
                labels=decoded.labels,
                labels_fdi=decoded.labels_fdi,
                prepared=prepared,
                pixel_spacing_mm=pixel_spacing_mm,
            )
        )
    return found


def _box_tooth(box: Box, zones: npt.NDArray[np.intp] | None, labels_fdi: tuple[str, ...]) -> str | None:
    """The tooth of a box: the model's own, else the tooth zone covering most of the box, else none."""
    if box.given_tooth or zones is None:
        return box.tooth_fdi
    rows, cols = zones.shape
    x0, y0 = int(np.clip(np.floor(box.box[0]), 0, cols)), int(np.clip(np.floor(box.box[1]), 0, rows))
    x1, y1 = int(np.clip(np.ceil(box.box[2]), x0, cols)), int(np.clip(np.ceil(box.box[3]), y0, rows))
    inside = zones[y0:y1, x0:x1]
    counts = np.bincount(inside.reshape(-1), minlength=len(labels_fdi) + 1)[1:]
    return labels_fdi[int(counts.argmax())] if counts.any() else None


def _one_per_tooth(boxes: list[tuple[Box, str | None]]) -> list[tuple[Box, str | None]]:
    """Boxed candidates of one kind on one tooth merged into one: the boxes' union, the best confidence.

    A clinician reads "caries on 36" once; two overlapping detections or two lesions on one tooth are one
    finding on it. Candidates without a tooth are kept as they are.
    """
    merged: dict[tuple[str, str], tuple[Box, str | None]] = {}
    rest: list[tuple[Box, str | None]] = []
    for box, tooth in boxes:
        if tooth is None:
            rest.append((box, tooth))
            continue
        key = (box.kind, tooth)
        if key not in merged:
            merged[key] = (box, tooth)
            continue
        other = merged[key][0]
        union = (
            min(box.box[0], other.box[0]),
            min(box.box[1], other.box[1]),
            max(box.box[2], other.box[2]),
            max(box.box[3], other.box[3]),
        )
        best = box if box.confidence > other.confidence else other
        merged[key] = (dataclasses.replace(best, box=union, outline=()), tooth)
    return [*merged.values(), *rest]


def _box_finding(
    box: Box, tooth: str | None, prepared: _Transform, pixel_spacing_mm: tuple[float, float] | None
) -> Finding:
    """A boxed candidate in source pixels: its box, its outline (else the box's corners), its area."""
    bbox = prepared.box_to_source(box.box)
    x0, y0, x1, y1 = box.box
    corners = box.outline or ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    points = prepared.to_source(np.asarray(corners, dtype=np.float64).reshape(-1, 2))
    points[:, 0] = np.clip(points[:, 0], bbox[0], bbox[2])
    points[:, 1] = np.clip(points[:, 1], bbox[1], bbox[3])
    area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
    row_mm, col_mm = pixel_spacing_mm if pixel_spacing_mm is not None else (None, None)
    return Finding(
        kind=box.kind,
        tooth_fdi=tooth,
        confidence=box.confidence,
        bbox=bbox,
        polygon=tuple((float(x), float(y)) for x, y in points),
        area_px=area,
        area_mm2=None if row_mm is None or col_mm is None else area * row_mm * col_mm,
    )


def findings_from_outputs(
    outputs: dict[str, npt.NDArray[Any]],
    bundle_manifest: Manifest,
    prepared: _Transform,
    pixel_spacing_mm: tuple[float, float] | None,
    *,
    consume: bool = False,
) -> list[Finding]:
    """Findings of one image from the model's outputs (with ``consume``, overwriting the tooth logits).

    The outputs are read by the decoder of the manifest's output kind (:mod:`edge.pipeline.decoders`); the
    candidates it gives are put on their teeth and turned into findings here. ``prepared`` is the
    :class:`~edge.pipeline.preprocess.Prepared` of the image; ``pixel_spacing_mm`` is ``(row, column)`` spacing
    (DICOM order: vertical, then horizontal) in mm, or ``None`` when the image has none.
    """
    return findings_from_decoded(decode(outputs, bundle_manifest, consume=consume), prepared, pixel_spacing_mm)


def findings_from_decoded(
    decoded: Decoded, prepared: _Transform, pixel_spacing_mm: tuple[float, float] | None
) -> list[Finding]:
    """Findings of one image from its decoded outputs (:func:`findings_from_outputs` after the decoder)."""
    zones = _zones(decoded.labels)
    found: list[Finding] = []
    for region in decoded.regions:
        assert zones is not None  # a segmentation bundle has a tooth output
        found.extend(_region_findings(region, zones, decoded, prepared, pixel_spacing_mm))
    boxes = _one_per_tooth([(box, _box_tooth(box, zones, decoded.labels_fdi)) for box in decoded.boxes])
    found.extend(_box_finding(box, tooth, prepared, pixel_spacing_mm) for box, tooth in boxes)
    return apply_clinical_rules(found)


def findings_from_crops(
    outputs: dict[str, npt.NDArray[Any]],
    crops: Sequence[ToothCrop],
    bundle_manifest: Manifest,
    source_shape: tuple[int, int],
    pixel_spacing_mm: tuple[float, float] | None,
) -> list[Finding]:
    """Findings of one image from a two-stage bundle's second network, run on ``crops`` (one per tooth).

    A tooth has a finding of a class when the crop's ``present`` probability reaches the class's threshold; the
    finding's region is the largest connected part of its mask at 0.5 (where the mask has none, the pixels at
    half its peak or more), mapped from the crop back to source pixels; its confidence is the presence
    probability; its tooth is the crop's. Bone loss is measured in the crop, crown first: the loss is the
    region's median column height, and the percentage relates it to the root from the region's coronal edge to
    the crop's apex row, given only where that root is :data:`MIN_ROOT_SHARE` of the tooth or more.
    """
    stage = bundle_manifest.crops
    if stage is None:
        raise PipelineError(f"{bundle_manifest.id}: the bundle has no crop stage")
    if not crops:
        return []
    classes = bundle_manifest.findings.classes
    masks = _crop_tensor(outputs, stage.masks, (len(crops), len(classes)), 4)
    present = _crop_tensor(outputs, stage.present, (len(crops), len(classes)), 2)
    factor = stage.input.height / masks.shape[2]
    if masks.shape[3] * factor != stage.input.width:
        raise PipelineError(f"output {stage.masks!r} of shape {masks.shape} is not a whole fraction of the crop")
    probability = 1.0 / (1.0 + np.exp(-present.astype(np.float64)))
    found: list[Finding] = []
    for i, crop in enumerate(crops):
        for k, cls in enumerate(classes):
            if probability[i, k] < cls.threshold:
                continue
            region = _crop_region(masks[i, k])
            found.append(
                _crop_finding(
                    cls.kind,
                    region,
                    crop,
                    factor=factor,
                    confidence=float(probability[i, k]),
                    source_shape=source_shape,
                    pixel_spacing_mm=pixel_spacing_mm,
                    layout=stage.input,
                )
            )
    return found


def _crop_tensor(
    outputs: dict[str, npt.NDArray[Any]], name: str, leading: tuple[int, int], ndim: int
) -> npt.NDArray[np.float32]:
    if name not in outputs:
        raise PipelineError(f"the crop network has no output {name!r}")
    value = np.asarray(outputs[name], dtype=np.float32)
    if value.ndim != ndim or value.shape[:2] != leading:
        raise PipelineError(f"crop output {name!r} has shape {value.shape}, expected {leading} then {ndim - 2} more")
    return value


def _crop_region(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """The largest connected part of the mask at probability 0.5, else at half the peak probability."""
    mask = logits >= 0.0
    if not mask.any():
        peak = 1.0 / (1.0 + np.exp(-float(logits.max())))
        mask = logits >= np.float32(np.log((peak / 2) / (1 - peak / 2)))
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        mask = components == int(sizes.argmax()) + 1
    return mask


def _crop_finding(
    kind: str,
    region: npt.NDArray[np.bool_],
    crop: ToothCrop,
    *,
    factor: float,
    confidence: float,
    source_shape: tuple[int, int],
    pixel_spacing_mm: tuple[float, float] | None,
    layout: CropLayout,
) -> Finding:
    outline = np.asarray(region_outline(region), dtype=np.float64).reshape(-1, 2) * factor
    points = crop.to_source(outline)
    rows, cols = source_shape
    points[:, 0] = np.clip(points[:, 0], 0, cols)
    points[:, 1] = np.clip(points[:, 1], 0, rows)
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int)
    area = float(region.sum()) * (factor * crop.step) ** 2
    row_mm, col_mm = pixel_spacing_mm if pixel_spacing_mm is not None else (None, None)
    loss_mm = loss_pct = None
    if kind == "bone_loss":
        loss_mm, loss_pct = _crop_bone_loss(region, factor, crop.step, row_mm, layout)
    return Finding(
        kind=kind,
        tooth_fdi=crop.fdi,
        confidence=min(1.0, max(0.0, confidence)),
        bbox=(int(x0), int(y0), int(max(x1, x0)), int(max(y1, y0))),
        polygon=tuple((float(x), float(y)) for x, y in points),
        area_px=round(area),
        area_mm2=None if row_mm is None or col_mm is None else area * row_mm * col_mm,
        bone_loss_mm=loss_mm,
        bone_loss_pct=loss_pct,
    )


def _crop_bone_loss(
    region: npt.NDArray[np.bool_], factor: float, step: float, row_mm: float | None, layout: CropLayout
) -> tuple[float | None, float | None]:
    """``(bone_loss_mm, bone_loss_pct)`` of a bone-loss region in a crown-first crop (mask pixels)."""
    sub, band_height = _band(region)
    height = band_height * factor  # crop pixels
    loss_mm = None if row_mm is None else height * step * row_mm
    coronal = float(np.median(sub.argmax(axis=0))) * factor
    apex = apex_row(layout)
    crown = layout.height * layout.crown_margin / (1.0 + layout.crown_margin + layout.apex_margin)
    tooth = apex - crown
    return loss_mm, _loss_pct(height, apex - coronal, tooth)

"""Model outputs -> findings in source pixels (pure: arrays in, :class:`~edge.pipeline.findings.Finding` out).

The reference model's outputs, for one image: ``teeth`` logits ``[1, 1 + T, H/s, W/s]`` (softmax; channel 0 is
background, channel ``k`` is the tooth ``labels_fdi[k - 1]`` of the manifest; ``s`` a whole number, 2 for the
reference model) and ``findings`` logits ``[1, K, H, W]`` (independent sigmoids, one per finding class in manifest
order).

Tooth numbers follow the order of the arch (:func:`tooth_labels`). Every model pixel is given to its nearest
tooth (a Voronoi partition of the tooth labels). A finding is a connected region of one class above the class
threshold, at least ``min_area_px`` model pixels large; a region that spans several teeth' zones with a
substantial share in each (a bridge of two crowns, bone loss along a row) becomes one finding per tooth
(:data:`MIN_SHARE`); of two findings of mutually exclusive kinds in one place only the more confident is kept
(:data:`EXCLUSIVE`). Its tooth is the zone's tooth, or none when the region lies more than
:data:`MAX_TOOTH_DISTANCE` of the model's width from every tooth. Confidence is the mean probability over the
region. Boxes and outlines (the convex hull of the region) are mapped to source pixels through the letterbox
transform; areas are scaled to source pixels and to mm² with the pixel spacing when it is known.

Bone loss is measured per tooth zone along the image's vertical (a panoramic's teeth stand nearly upright): its
height is the median height of the region's columns, and the root length is the distance from the region's
coronal edge (the cemento-enamel junction, where a healthy crest sits) to the tooth's apex in the tooth output,
and a percentage is given only for a root at least :data:`MIN_ROOT_SHARE` of the tooth.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from edge.errors import PipelineError
from edge.pipeline.findings import Finding
from edge.pipeline.teeth import PERMANENT_FDI, is_upper

__all__ = [
    "EXCLUSIVE",
    "EXCLUSIVE_IOU",
    "MAX_TOOTH_DISTANCE",
    "MIN_ROOT_SHARE",
    "MIN_SHARE",
    "box_iou",
    "findings_from_outputs",
    "region_outline",
    "repeat_labels",
    "tooth_labels",
]

MAX_TOOTH_DISTANCE = 0.04
"""A region farther than this fraction of the model's width from every tooth is reported without a tooth."""
EXCLUSIVE: tuple[tuple[str, str], ...] = (("implant", "root_canal_filling"),)
"""Kinds that cannot both be what a radiograph shows in one place (an implant has no root canal). Of two such
findings whose boxes overlap with IoU >= :data:`EXCLUSIVE_IOU` the less confident is dropped. Crown and restoration
are not listed: the reference model is surer of "crown" on every metal surface, so the rule dropped true fillings."""
EXCLUSIVE_IOU = 0.3
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


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two end-exclusive ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _exclusive(found: list[Finding]) -> list[Finding]:
    """``found`` without the less confident of any two :data:`EXCLUSIVE` findings in the same place."""
    dropped: set[int] = set()
    for first, second in EXCLUSIVE:
        for i, a in enumerate(found):
            for j, b in enumerate(found):
                if a.kind != first or b.kind != second or i in dropped or j in dropped:
                    continue
                if box_iou(a.bbox, b.bbox) >= EXCLUSIVE_IOU:
                    dropped.add(j if a.confidence >= b.confidence else i)
    return [f for k, f in enumerate(found) if k not in dropped]


def region_outline(mask: npt.NDArray[np.bool_]) -> list[tuple[float, float]]:
    """The convex hull of a region's pixels as ``(x, y)`` pixel-edge points, clockwise on screen (y down).

    Pixel ``(row, col)`` spans ``[col, col + 1) x [row, row + 1)``; an empty mask gives an empty outline.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    sub = mask[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    points = sorted(
        {
            (float(x), float(y))
            for r, lo, hi in zip(rows, first, last, strict=True)
            for x in (lo, hi + 1)
            for y in (r, r + 1)
        }
    )
    if len(points) <= 2:
        return points

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _monotone_columns(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """The non-decreasing state per column that maximises the summed ``scores[column, state]`` (Viterbi)."""
    columns, states = scores.shape
    index = np.arange(states)
    value = scores[0].copy()
    back = np.zeros((columns, states), np.intp)
    for x in range(1, columns):
        best = np.maximum.accumulate(value)
        back[x] = np.maximum.accumulate(np.where(value >= best, index, 0))
        value = scores[x] + best
    path = np.zeros(columns, np.intp)
    path[-1] = int(value.argmax())
    for x in range(columns - 1, 0, -1):
        path[x - 1] = back[x, path[x]]
    return path


def tooth_labels(
    teeth: npt.NDArray[np.float32], labels_fdi: tuple[str, ...], *, consume: bool = False
) -> npt.NDArray[np.intp]:
    """Tooth label per pixel (0 none, ``k`` the tooth ``labels_fdi[k - 1]``) from ``[1 + T, H, W]`` logits.

    Where the pixel is a tooth comes from the arg-max; which tooth, from the order teeth stand in on a panoramic:
    in each jaw, numbers run monotonically across the image (upper 18 ... 28 and lower 48 ... 38 from the image's
    left). Each column of each jaw gets the number that best fits the column's tooth probabilities under that
    order. This corrects the network's left/right and neighbour confusions. A manifest with teeth outside the
    permanent dentition gets the plain arg-max. With ``consume`` the softmax overwrites ``teeth`` instead of a copy
    (33 channels at 256x512 are 17 MB). Labels come at the logits' resolution (see :func:`repeat_labels`).
    """
    labels = np.asarray(teeth.argmax(axis=0), dtype=np.intp)
    if not set(labels_fdi) <= set(PERMANENT_FDI) or not labels.any():
        return labels
    if consume:
        probs = teeth
        probs -= teeth.max(axis=0, keepdims=True)
    else:
        probs = teeth - teeth.max(axis=0, keepdims=True)  # one float32 copy; everything below is in place or 2-D
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=0, keepdims=True)
    rank = {fdi: i for i, fdi in enumerate(PERMANENT_FDI)}
    channels = sorted(range(1, len(labels_fdi) + 1), key=lambda k: rank[labels_fdi[k - 1]])
    upper = [k for k in channels if is_upper(labels_fdi[k - 1])]
    lower = [k for k in reversed(channels) if not is_upper(labels_fdi[k - 1])]
    upper_mass = np.zeros(labels.shape, np.float32)
    lower_mass = np.zeros(labels.shape, np.float32)
    for k in upper:
        upper_mass += probs[k]
    for k in lower:
        lower_mass += probs[k]
    tooth = labels > 0
    in_upper = upper_mass >= lower_mass
    result = np.zeros_like(labels)
    for order, jaw in ((upper, tooth & in_upper), (lower, tooth & ~in_upper)):
        if not order or not jaw.any():
            continue
        weight = jaw.astype(np.float32)
        scores = np.stack([(probs[k] * weight).sum(axis=0, dtype=np.float64) for k in order], axis=1)
        column_label = np.asarray(order, dtype=np.intp)[_monotone_columns(scores)]
        rows, cols = np.nonzero(jaw)
        result[rows, cols] = column_label[cols]
    return result


def repeat_labels(labels: npt.NDArray[np.intp], shape: tuple[int, int]) -> npt.NDArray[np.intp]:
    """Tooth ``labels`` made at a whole fraction (1, 1/2, 1/4 ...) of ``shape``, each repeated up to it.

    A tooth head may work below the model's input resolution (the reference model's does, at 1/2): tooth numbers
    need context, not the last pixel, and full-resolution tooth logits would be the largest tensor of the run.
    """
    rows, cols = shape
    height, width = labels.shape
    factor = rows // height if height else 0
    if factor < 1 or (height * factor, width * factor) != (rows, cols):
        raise PipelineError(f"model outputs disagree in size: tooth labels {labels.shape}, findings {(rows, cols)}")
    if factor == 1:
        return labels
    return np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)


def _single(outputs: dict[str, npt.NDArray[Any]], name: str) -> npt.NDArray[np.float32]:
    if name not in outputs:
        raise PipelineError(f"model output {name!r} is missing (have {sorted(outputs)})")
    array = np.asarray(outputs[name], dtype=np.float32)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise PipelineError(f"model output {name!r} has batch size {array.shape[0]}; post-process one image")
        array = array[0]
    if array.ndim != 3:
        raise PipelineError(f"model output {name!r} has shape {array.shape}; expected [1, C, H, W]")
    return array


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
    columns = np.flatnonzero(region.any(axis=0))
    heights = region[:, columns].sum(axis=0)
    height_px = float(np.median(heights)) / transform.scale[1]
    loss_mm = None if row_mm is None else height_px * row_mm
    if tooth is None or not tooth.any():
        return loss_mm, None
    rows = np.flatnonzero(tooth.any(axis=1))  # the whole tooth: a root tapers, the band lies along its flanks
    tooth_px = float(rows[-1] + 1 - rows[0]) / transform.scale[1]
    sub = region[:, columns]
    if upper:  # crown down, apex up: the junction is the band's lower edge
        coronal = float(np.median(sub.shape[0] - sub[::-1].argmax(axis=0)))
        root_px = (coronal - float(rows[0])) / transform.scale[1]
    else:
        coronal = float(np.median(sub.argmax(axis=0)))
        root_px = (float(rows[-1] + 1) - coronal) / transform.scale[1]
    if not MIN_ROOT_SHARE * tooth_px <= root_px <= tooth_px:  # the junction is not where the band starts
        return loss_mm, None
    return loss_mm, float(min(100.0, 100.0 * height_px / root_px))


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


def findings_from_outputs(
    outputs: dict[str, npt.NDArray[Any]],
    bundle_manifest: Any,
    prepared: _Transform,
    pixel_spacing_mm: tuple[float, float] | None,
    *,
    consume: bool = False,
) -> list[Finding]:
    """Findings of one image from the model's outputs (with ``consume``, overwriting the tooth logits).

    ``bundle_manifest`` is a :class:`models.bundle.Manifest`; ``prepared`` the
    :class:`~edge.pipeline.preprocess.Prepared` of the image; ``pixel_spacing_mm`` is ``(row, column)`` spacing
    (DICOM order: vertical, then horizontal) in mm, or ``None`` when the image has none.
    """
    teeth_spec, findings_spec = bundle_manifest.teeth, bundle_manifest.findings
    teeth = _single(outputs, teeth_spec.name)
    scores = _single(outputs, findings_spec.name)
    classes = findings_spec.classes
    if teeth.shape[0] != len(teeth_spec.labels_fdi) + 1 or scores.shape[0] != len(classes):
        raise PipelineError(
            f"model outputs have {teeth.shape[0]} tooth and {scores.shape[0]} finding channels; the manifest "
            f"expects {len(teeth_spec.labels_fdi) + 1} and {len(classes)}"
        )
    labels = tooth_labels(teeth, teeth_spec.labels_fdi, consume=consume)
    labels = repeat_labels(labels, (scores.shape[1], scores.shape[2]))
    width = labels.shape[1]
    if labels.any():
        distance, (near_r, near_c) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        zones = labels[near_r, near_c]
        zones[distance > MAX_TOOTH_DISTANCE * width] = 0
    else:
        zones = np.zeros_like(labels)
    found: list[Finding] = []
    for index, cls in enumerate(classes):
        logits = scores[index]
        mask = logits >= np.float32(np.log(cls.threshold / (1.0 - cls.threshold)))
        if not mask.any():
            continue
        components, _ = ndimage.label(mask)
        for number, window in enumerate(ndimage.find_objects(components), start=1):
            if window is None:
                continue
            whole = components[window] == number
            total = int(whole.sum())
            if total < cls.min_area_px:
                continue
            local_zones = zones[window]
            counts = np.bincount(local_zones[whole], minlength=len(teeth_spec.labels_fdi) + 1)
            floor = max(cls.min_area_px, MIN_SHARE * total)
            major = [int(z) for z in np.flatnonzero(counts >= floor)] or [int(counts.argmax())]
            largest = max(major, key=lambda z: int(counts[z]))
            stray = whole & ~np.isin(local_zones, major)
            for zone in major:
                region = whole & (local_zones == zone)
                if zone == largest:
                    region |= stray
                found.append(
                    _finding(
                        kind=cls.kind,
                        region=region,
                        window=window,
                        logits=logits,
                        zone=zone,
                        labels=labels,
                        labels_fdi=teeth_spec.labels_fdi,
                        prepared=prepared,
                        pixel_spacing_mm=pixel_spacing_mm,
                    )
                )
    return _exclusive(found)

"""Model outputs -> candidate findings in model-input pixels, one decoder per output kind (pure: arrays in).

A bundle's manifest says what its outputs are (``outputs.kind``, :data:`models.bundle.OUTPUT_KINDS`) and
:data:`DECODERS` holds one small function per kind that reads them:

- ``segmentation`` (the reference U-Net): ``findings`` logits ``[1, K, H, W]``, one sigmoid channel per class,
  become connected :class:`Region` s above the class threshold and at least ``min_area_px`` large;
- ``detection``: ``boxes [N, 4]`` with ``scores [N]`` and ``classes [N]`` or a ``class_scores [N, C]`` matrix
  become :class:`Box` es at or above the class threshold, suppressed per class (NMS) when the model does not;
- ``tooth_classification``: a ``[T, K]`` score per tooth and finding column becomes one :class:`Box` per tooth
  and class at or above the threshold, on that tooth.

Every decoder also reads the tooth segmentation (``teeth``) when the bundle has one (:func:`tooth_labels`), so
that :func:`edge.pipeline.postprocess.findings_from_outputs` can put each candidate on its tooth, keep the clinical
rules (one finding per tooth, exclusive kinds, bone loss) in one place and map everything to source pixels through
the inverse letterbox. A tensor may carry a leading batch dimension of 1. An output that is missing or of the wrong
shape raises :class:`~edge.errors.PipelineError` naming it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from dental.outline import region_outline
from dental.teeth import PERMANENT_FDI, is_upper
from edge.errors import PipelineError
from models.bundle import DetectionOutput, Manifest, ToothClassificationOutput

__all__ = [
    "DECODERS",
    "Box",
    "Decoded",
    "Decoder",
    "Region",
    "decode",
    "nms",
    "repeat_labels",
    "tooth_labels",
    "xyxy_boxes",
]

BoxTuple = tuple[float, float, float, float]


@dataclass(frozen=True)
class Region:
    """A connected region of one segmentation class: ``mask`` is its window ``window`` of the model grid."""

    kind: str
    window: tuple[slice, slice]
    mask: npt.NDArray[np.bool_]
    logits: npt.NDArray[np.float32]
    """The class's whole logit map (confidence is the mean probability over whichever part becomes a finding)."""
    min_area_px: int


@dataclass(frozen=True)
class Box:
    """A boxed candidate in model pixels: ``box`` is ``(x0, y0, x1, y1)``, end-exclusive."""

    kind: str
    confidence: float
    box: BoxTuple
    tooth_fdi: str | None = None
    given_tooth: bool = False
    """The model itself named the tooth (or that it has none); otherwise the tooth segmentation decides."""
    outline: tuple[tuple[float, float], ...] = ()
    """The outline in model pixels, when better known than the box (a tooth's own outline)."""


@dataclass(frozen=True)
class Decoded:
    """What one image's outputs hold, in model pixels."""

    labels: npt.NDArray[np.intp] | None
    """Tooth label per model pixel (0 none, ``k`` the tooth ``labels_fdi[k - 1]``), or None without a tooth output."""
    labels_fdi: tuple[str, ...] = ()
    regions: tuple[Region, ...] = ()
    boxes: tuple[Box, ...] = ()

    def teeth(self) -> tuple[str, ...] | None:
        """The FDI numbers of the teeth the labels hold, in label order; None without a tooth output."""
        if self.labels is None:
            return None
        counts = np.bincount(self.labels.reshape(-1), minlength=len(self.labels_fdi) + 1)[1 : len(self.labels_fdi) + 1]
        return tuple(fdi for fdi, n in zip(self.labels_fdi, counts, strict=True) if n)


Decoder = Callable[[Mapping[str, npt.NDArray[Any]], Manifest, bool], Decoded]
"""``(outputs, manifest, consume) -> Decoded``; ``consume`` lets it overwrite the outputs instead of copying."""


def _tensor(outputs: Mapping[str, npt.NDArray[Any]], name: str, ndim: int) -> npt.NDArray[np.float32]:
    """Output ``name`` as float32 with ``ndim`` dimensions (a leading batch dimension of 1 is dropped)."""
    if name not in outputs:
        raise PipelineError(f"model output {name!r} is missing (have {sorted(outputs)})")
    array = np.asarray(outputs[name], dtype=np.float32)
    if array.ndim == ndim + 1:
        if array.shape[0] != 1:
            raise PipelineError(f"model output {name!r} has batch size {array.shape[0]}; post-process one image")
        array = array[0]
    if array.ndim != ndim:
        raise PipelineError(f"model output {name!r} has shape {array.shape}; expected {ndim} dimensions (+ batch 1)")
    return array


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
    order; then each tooth (a connected region of one number, split where two touch) gets a number of its own,
    in order, with the two jaws' midlines one above the other (:func:`_number_teeth`). This corrects the
    network's left/right and neighbour confusions (tooth numbering 0.76 -> 0.98 on the held-out set). A manifest
    with teeth outside the permanent dentition gets the plain arg-max. With ``consume`` the softmax overwrites
    ``teeth`` instead of a copy (33 channels at 256x512 are 17 MB). Labels come at the logits' resolution (see
    :func:`repeat_labels`).
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
    jaws: list[_Jaw] = []
    for order, jaw in ((upper, tooth & in_upper), (lower, tooth & ~in_upper)):
        if not order or not jaw.any():
            continue
        weight = jaw.astype(np.float32)
        scores = np.stack([(probs[k] * weight).sum(axis=0, dtype=np.float64) for k in order], axis=1)
        column_label = np.asarray(order, dtype=np.intp)[_monotone_columns(scores)]
        rows, cols = np.nonzero(jaw)
        result[rows, cols] = column_label[cols]
        jaws.append(_jaw(result, jaw, probs, order))
    teeth_found = [jaw.regions[i] for jaw in jaws for i in jaw.big]
    if teeth_found:
        width = float(np.median([float(np.ptp(r[2]) + 1) for r in teeth_found]))
        score = float(np.median([r[1].size for r in teeth_found]))
        _number_teeth(result, jaws, width, score)
    return result


FRAGMENT_SHARE = 0.2
"""A tooth region smaller than this share of the jaw's median tooth region is a fragment, not a tooth: it takes
the number of the nearest tooth across (:func:`_number_teeth`)."""
MIDLINE_WEIGHT = 1.0
"""How much a typical tooth's worth of probability one typical tooth width of disagreement between the upper and
the lower midline costs (:func:`_number_teeth`)."""

_Region = tuple[float, npt.NDArray[np.intp], npt.NDArray[np.intp]]
"""``(centre column, rows, columns)`` of one tooth's pixels."""


@dataclass(frozen=True)
class _Jaw:
    order: list[int]
    regions: list[_Region]
    big: list[int]
    """Indices of the regions that are teeth (not fragments), across the image."""
    scores: npt.NDArray[np.float64]
    """``[tooth, number]``: summed probability of each tooth's pixels for each number of ``order``."""


def _jaw(
    result: npt.NDArray[np.intp], jaw: npt.NDArray[np.bool_], probs: npt.NDArray[np.float32], order: list[int]
) -> _Jaw:
    """One jaw's teeth: the connected regions of each number (split where two touch), fragments apart."""
    regions: list[_Region] = []
    numbered = np.where(jaw, result, 0)
    for k, window in enumerate(ndimage.find_objects(numbered.astype(np.int32)), start=0):
        if window is None or k + 1 not in order:
            continue
        components, count = ndimage.label(numbered[window] == k + 1)
        top, left = window[0].start, window[1].start
        for number in range(1, count + 1):
            rows, cols = np.nonzero(components == number)
            rows, cols = rows + top, cols + left
            regions.append((float(cols.mean()), rows, cols))
    if regions:
        typical = float(np.median([float(np.ptp(r[2]) + 1) for r in regions]))
        regions = [part for region in regions for part in _split_touching(region, typical)]
    areas = np.asarray([r[1].size for r in regions], dtype=np.float64)
    floor = FRAGMENT_SHARE * float(np.median(areas)) if regions else 0.0
    big = [i for i in range(len(regions)) if areas[i] >= floor]
    big = sorted(sorted(big, key=lambda i: -areas[i])[: len(order)], key=lambda i: regions[i][0])
    if not big:
        return _Jaw(order, regions, big, np.zeros((0, len(order))))
    rows = np.concatenate([regions[i][1] for i in big])
    cols = np.concatenate([regions[i][2] for i in big])
    starts = np.cumsum([0] + [regions[i][1].size for i in big[:-1]])
    values = probs[np.asarray(order)[:, np.newaxis], rows[np.newaxis], cols[np.newaxis]]  # [number, pixel]
    scores = np.asarray(np.add.reduceat(values, starts, axis=1, dtype=np.float64).T, dtype=np.float64)
    return _Jaw(order, regions, big, scores)


def _halves(jaw: _Jaw) -> list[tuple[float, list[int | None], float | None]]:
    """Per split of the jaw's teeth at the midline (the first ``s`` teeth on the image's left side): the best
    score with the left teeth numbered from the first half of ``order`` and the others from the second, the
    numbers, and the midline's column (None when every tooth is on one side)."""
    n, half = len(jaw.big), len(jaw.order) // 2
    out: list[tuple[float, list[int | None], float | None]] = []
    for split in range(n + 1):
        if split > half or n - split > len(jaw.order) - half:
            continue
        left, right = jaw.scores[:split, :half], jaw.scores[split:, half:]
        numbers = (_increasing(left) if split else []) + [
            None if j is None else half + j for j in (_increasing(right) if n - split else [])
        ]
        total = float(sum(jaw.scores[i, j] for i, j in enumerate(numbers) if j is not None))
        midline = None
        if 0 < split < n:
            a, b = jaw.regions[jaw.big[split - 1]][2], jaw.regions[jaw.big[split]][2]
            midline = (float(a.max()) + 1.0 + float(b.min())) / 2.0
        out.append((total, numbers, midline))
    return out


def _number_teeth(result: npt.NDArray[np.intp], jaws: list[_Jaw], typical_width: float, typical_score: float) -> None:
    """Renumber the teeth of both jaws in place: no two teeth share a number, and the two midlines agree.

    The per-column order lets one number run over two neighbouring teeth (a molar taking its neighbour's number,
    the second left unused), and the network cannot tell one central incisor from the other: both sides of the
    midline look alike. So each tooth (:func:`_jaw`) gets, in order across the image, strictly increasing numbers
    (a sequence alignment maximising the summed probability of each tooth's pixels for its number), with the
    midline between the quadrants placed in both jaws together: the upper and the lower midline lie one above the
    other, and each typical tooth width between them costs :data:`MIDLINE_WEIGHT` typical teeth of probability.
    A region may also be left out of the numbering (it scores nothing: a spurious region only when that lets the
    others fit); it and the fragments (:data:`FRAGMENT_SHARE`) follow the nearest tooth.
    """
    nothing: list[tuple[float, list[int | None], float | None]] = [(0.0, [], None)]
    options = [_halves(jaw) if jaw.big else nothing for jaw in jaws]
    best: tuple[float, tuple[list[int | None], ...]] | None = None
    for combo in itertools.product(*options):
        total = sum(c[0] for c in combo)
        midlines = [c[2] for c in combo if c[2] is not None]
        if len(midlines) == 2:
            total -= MIDLINE_WEIGHT * typical_score * abs(midlines[0] - midlines[1]) / max(typical_width, 1.0)
        if best is None or total > best[0]:
            best = (total, tuple(c[1] for c in combo))
    assert best is not None
    for jaw, numbers in zip(jaws, best[1], strict=True):
        if not jaw.big:
            continue
        assigned = {i: jaw.order[j] for i, j in zip(jaw.big, numbers, strict=True) if j is not None}
        if not assigned:
            continue
        numbered = list(assigned)
        centres = np.asarray([jaw.regions[i][0] for i in numbered])
        for i, (centre, rows, cols) in enumerate(jaw.regions):
            k = assigned.get(i)
            if k is None:  # a fragment, or a region that is no tooth of its own: the nearest tooth's
                k = assigned[numbered[int(np.abs(centres - centre).argmin())]]
            result[rows, cols] = k


CONTACT_DEPTH = 0.5
"""Two touching teeth are one connected region; where its column height drops below this share of the taller
column on each side, over a width of at least half a typical tooth each side, it is two (:func:`_split_touching`)."""


def _split_touching(region: _Region, typical: float) -> list[_Region]:
    """A region split at its contact points (:data:`CONTACT_DEPTH`): a tooth's column is its whole length, a
    column through a contact only where the crowns touch."""
    _centre, rows, cols = region
    lo = int(cols.min())
    heights = np.bincount(cols - lo).astype(np.float64)
    if heights.size < typical:
        return [region]
    left = np.maximum.accumulate(heights)
    right = np.maximum.accumulate(heights[::-1])[::-1]
    deep = heights < CONTACT_DEPTH * np.minimum(left, right)
    margin = int(np.ceil(typical / 2))
    cut = None
    if deep[margin:-margin].any():
        inside = np.arange(margin, heights.size - margin)
        cut = int(inside[np.argmin(heights[margin:-margin] / np.minimum(left, right)[margin:-margin])])
    if cut is None:
        return [region]
    parts: list[_Region] = []
    for keep in (cols - lo < cut, cols - lo >= cut):
        part = (float(cols[keep].mean()), rows[keep], cols[keep])
        parts.extend(_split_touching(part, typical))
    return parts


def _increasing(scores: npt.NDArray[np.float64]) -> list[int | None]:
    """Per row of ``scores``, a column or None (skipped), the columns strictly increasing, maximising the sum of
    the rows' scores at their columns (a skipped row scores 0: a region that is not a tooth of its own)."""
    rows, columns = scores.shape
    # best[j]: the best total of the rows so far using only columns < j; took[i][j]: the column row i took on
    # the path to best[j] after row i, or -1 where row i was skipped
    best = np.zeros(columns + 1)
    took = np.full((rows, columns + 1), -1, np.intp)
    for i in range(rows):
        new = best.copy()
        run, run_c = -np.inf, -1
        for j in range(1, columns + 1):
            c = j - 1
            if best[c] + scores[i, c] > run:
                run, run_c = best[c] + scores[i, c], c
            if run > new[j]:
                new[j], took[i, j] = run, run_c
        best = new
    path: list[int | None] = [None] * rows
    state = columns
    for i in range(rows - 1, -1, -1):
        c = int(took[i, state])
        if c >= 0:
            path[i] = c
            state = c
    return path


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


def _labels(
    outputs: Mapping[str, npt.NDArray[Any]], manifest: Manifest, shape: tuple[int, int], consume: bool
) -> npt.NDArray[np.intp] | None:
    """The tooth labels of the bundle's tooth output at ``shape``, or None when it has no tooth output."""
    if manifest.teeth is None:
        return None
    teeth = _tensor(outputs, manifest.teeth.name, 3)
    if teeth.shape[0] != len(manifest.teeth.labels_fdi) + 1:
        raise PipelineError(
            f"model output {manifest.teeth.name!r} has {teeth.shape[0]} tooth channels; the manifest expects "
            f"{len(manifest.teeth.labels_fdi) + 1}"
        )
    return repeat_labels(tooth_labels(teeth, manifest.teeth.labels_fdi, consume=consume), shape)


def decode_segmentation(outputs: Mapping[str, npt.NDArray[Any]], manifest: Manifest, consume: bool) -> Decoded:
    """Connected regions of each class's sigmoid channel at or above its threshold and ``min_area_px``."""
    assert manifest.teeth is not None  # the manifest parser requires it for segmentation
    if manifest.crops is not None:  # two stages: the first network gives the teeth, the crops the findings
        shape = (manifest.input.height, manifest.input.width)
        return Decoded(labels=_labels(outputs, manifest, shape, consume), labels_fdi=manifest.teeth.labels_fdi)
    scores = _tensor(outputs, manifest.findings.name, 3)
    classes = manifest.findings.classes
    teeth = _tensor(outputs, manifest.teeth.name, 3)
    if teeth.shape[0] != len(manifest.teeth.labels_fdi) + 1 or scores.shape[0] != len(classes):
        raise PipelineError(
            f"model outputs have {teeth.shape[0]} tooth and {scores.shape[0]} finding channels; the manifest "
            f"expects {len(manifest.teeth.labels_fdi) + 1} and {len(classes)}"
        )
    labels = tooth_labels(teeth, manifest.teeth.labels_fdi, consume=consume)
    labels = repeat_labels(labels, (scores.shape[1], scores.shape[2]))
    regions: list[Region] = []
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
            if int(whole.sum()) < cls.min_area_px:
                continue
            regions.append(Region(cls.kind, window, whole, logits, cls.min_area_px))
    return Decoded(labels=labels, labels_fdi=manifest.teeth.labels_fdi, regions=tuple(regions))


def _activate(values: npt.NDArray[np.float32], activation: str) -> npt.NDArray[np.float64]:
    """Probabilities from ``values`` (``[..., C]`` for softmax over the last axis)."""
    x = values.astype(np.float64)
    if activation == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-x)))
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return np.asarray(e / e.sum(axis=-1, keepdims=True))
    return x


def xyxy_boxes(
    raw: npt.NDArray[np.float32], box_format: str, units: str, size: tuple[int, int]
) -> npt.NDArray[np.float64]:
    """``[N, 4]`` boxes written as ``box_format`` in ``units`` -> ``(x0, y0, x1, y1)`` model pixels.

    ``size`` is the model input's ``(height, width)``, what normalised coordinates are fractions of.
    """
    b = raw.astype(np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise PipelineError(f"boxes have shape {raw.shape}; expected [N, 4]")
    if box_format == "xywh":
        b = np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)
    elif box_format == "cxcywh":
        half_w, half_h = b[:, 2] / 2.0, b[:, 3] / 2.0
        b = np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], axis=1)
    if units == "normalized":
        height, width = size
        b = b * np.asarray([width, height, width, height], dtype=np.float64)
    return np.stack(
        [
            np.minimum(b[:, 0], b[:, 2]),
            np.minimum(b[:, 1], b[:, 3]),
            np.maximum(b[:, 0], b[:, 2]),
            np.maximum(b[:, 1], b[:, 3]),
        ],
        axis=1,
    )


def nms(boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], iou_threshold: float) -> list[int]:
    """Indices of ``boxes`` kept by greedy non-maximum suppression, most confident first."""
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order:
        best, *rest = order
        kept.append(best)
        if not rest:
            break
        others = np.asarray(rest)
        ix = np.clip(
            np.minimum(boxes[best, 2], boxes[others, 2]) - np.maximum(boxes[best, 0], boxes[others, 0]), 0, None
        )
        iy = np.clip(
            np.minimum(boxes[best, 3], boxes[others, 3]) - np.maximum(boxes[best, 1], boxes[others, 1]), 0, None
        )
        inter = ix * iy
        union = area[best] + area[others] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        order = [i for i, v in zip(rest, iou, strict=True) if v < iou_threshold]
    return kept


def decode_detection(outputs: Mapping[str, npt.NDArray[Any]], manifest: Manifest, consume: bool) -> Decoded:
    """Boxes at or above their class's threshold and ``min_area_px`` (box area), per-class NMS if declared."""
    spec = manifest.decoder
    assert isinstance(spec, DetectionOutput)
    size = (manifest.input.height, manifest.input.width)
    classes = manifest.findings.classes
    boxes = xyxy_boxes(_tensor(outputs, spec.boxes, 2), spec.box_format, spec.box_units, size)
    if spec.class_scores is not None:
        matrix = _activate(_tensor(outputs, spec.class_scores, 2), spec.score_activation)
        if matrix.shape[1] != len(classes):
            raise PipelineError(
                f"model output {spec.class_scores!r} has {matrix.shape[1]} classes; the manifest has {len(classes)}"
            )
        index = matrix.argmax(axis=1).astype(np.intp) if matrix.shape[0] else np.zeros(0, np.intp)
        scores = matrix.max(axis=1) if matrix.shape[0] else np.zeros(0)
    else:
        assert spec.scores is not None
        assert spec.classes is not None
        scores = _activate(_tensor(outputs, spec.scores, 1), spec.score_activation)
        index = np.rint(_tensor(outputs, spec.classes, 1)).astype(np.intp)
    teeth_index = None
    if spec.tooth is not None:
        teeth_index = np.rint(_tensor(outputs, spec.tooth.name, 1)).astype(np.intp)
    lengths = {len(boxes), len(scores), len(index), *(() if teeth_index is None else (len(teeth_index),))}
    if len(lengths) != 1:
        raise PipelineError(f"detection outputs disagree in length: {sorted(lengths)} boxes/scores/classes/teeth")
    if index.size and int(index.max()) >= len(classes):
        raise PipelineError(f"a detection has class {int(index.max())}; the manifest has {len(classes)} classes")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)  # a NaN box is no finding (and no crash)
    keep: list[int] = []
    for c, cls in enumerate(classes):
        mine = np.flatnonzero(finite & (index == c) & (scores >= cls.threshold) & (area >= cls.min_area_px))
        if spec.nms and mine.size:
            mine = mine[nms(boxes[mine], scores[mine], spec.iou_threshold)]
        keep.extend(int(i) for i in mine)
    found: list[Box] = []
    for i in sorted(keep):
        tooth, given = None, False
        if spec.tooth is not None and teeth_index is not None:
            k = int(teeth_index[i])
            tooth, given = (spec.tooth.labels_fdi[k] if 0 <= k < len(spec.tooth.labels_fdi) else None), True
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        found.append(
            Box(classes[int(index[i])].kind, min(1.0, max(0.0, float(scores[i]))), (x0, y0, x1, y1), tooth, given)
        )
    labels = _labels(outputs, manifest, size, consume)
    return Decoded(
        labels=labels, labels_fdi=() if manifest.teeth is None else manifest.teeth.labels_fdi, boxes=tuple(found)
    )


def _tooth_extent(
    labels: npt.NDArray[np.intp] | None, labels_fdi: tuple[str, ...], fdi: str
) -> tuple[BoxTuple, tuple[tuple[float, float], ...]] | None:
    """The box and outline of tooth ``fdi`` in the tooth segmentation, or None when it is not there."""
    if labels is None or fdi not in labels_fdi:
        return None
    mask = labels == labels_fdi.index(fdi) + 1
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    return box, tuple(region_outline(mask))


def decode_tooth_classification(outputs: Mapping[str, npt.NDArray[Any]], manifest: Manifest, consume: bool) -> Decoded:
    """One candidate per tooth and finding column at or above the class's threshold, on that tooth."""
    spec = manifest.decoder
    assert isinstance(spec, ToothClassificationOutput)
    size = (manifest.input.height, manifest.input.width)
    scores = _tensor(outputs, spec.name, 2)
    if scores.shape != (len(spec.teeth_fdi), len(spec.columns)):
        raise PipelineError(
            f"model output {spec.name!r} has shape {scores.shape}; the manifest expects "
            f"[{len(spec.teeth_fdi)}, {len(spec.columns)}] (teeth x columns)"
        )
    probs = _activate(scores, spec.activation)
    boxes = None
    if spec.boxes is not None:
        boxes = xyxy_boxes(_tensor(outputs, spec.boxes, 2), spec.box_format, spec.box_units, size)
        if len(boxes) != len(spec.teeth_fdi):
            raise PipelineError(f"model output {spec.boxes!r} has {len(boxes)} boxes for {len(spec.teeth_fdi)} teeth")
    labels = _labels(outputs, manifest, size, consume)
    labels_fdi = () if manifest.teeth is None else manifest.teeth.labels_fdi
    threshold = {c.kind: c.threshold for c in manifest.findings.classes}
    whole: BoxTuple = (0.0, 0.0, float(size[1]), float(size[0]))
    found: list[Box] = []
    for t, fdi in enumerate(spec.teeth_fdi):
        for k, kind in enumerate(spec.columns):
            if not kind or not probs[t, k] >= threshold[kind]:  # NaN is not a finding
                continue
            outline: tuple[tuple[float, float], ...] = ()
            if boxes is not None and np.isfinite(boxes[t]).all():
                box: BoxTuple = (float(boxes[t, 0]), float(boxes[t, 1]), float(boxes[t, 2]), float(boxes[t, 3]))
            elif (extent := _tooth_extent(labels, labels_fdi, fdi)) is not None:
                box, outline = extent
            else:
                box = whole
            found.append(Box(kind, min(1.0, max(0.0, float(probs[t, k]))), box, fdi, True, outline))
    return Decoded(labels=labels, labels_fdi=labels_fdi, boxes=tuple(found))


DECODERS: Mapping[str, Decoder] = {
    "segmentation": decode_segmentation,
    "detection": decode_detection,
    "tooth_classification": decode_tooth_classification,
}
"""One decoder per output kind (``outputs.kind`` of the manifest)."""


def decode(outputs: Mapping[str, npt.NDArray[Any]], manifest: Manifest, *, consume: bool = False) -> Decoded:
    """Decode one image's ``outputs`` by the decoder of the manifest's output kind."""
    return DECODERS[manifest.output_kind](outputs, manifest, consume)

"""Per-tooth crops at full resolution: where each tooth's crop lies, the crops as a batch, and the way back.

A two-stage bundle (docs/bundles.md, "Tooth crops") finds and numbers the teeth on the downscaled image (its first
network's tooth output) and looks for findings on a crop of the *source* image round each tooth (its second
network, one batch of crops): a caries lesion 2-3 mm across is a dozen source pixels, a handful at the first
network's resolution. Pure: arrays in, arrays out.

Each crop is upright and crown first: row 0 is on the crown's side (a lower tooth's crop is the source as it is,
an upper tooth's is flipped top to bottom), so the second network sees every tooth the same way up. Its size is set
by the tooth's length (the vertical extent of its label, a panoramic's teeth stand nearly upright) with
a margin beyond the crown and a larger one beyond the apex (a periapical
lesion lies there), and the crop is sampled at one scale both ways (width and height keep their proportions, so
the network can tell a molar from an incisor), centred on the tooth across.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from dental.teeth import is_upper

__all__ = ["MIN_LENGTH_PX", "CropLayout", "ToothCrop", "apex_row", "crop_boxes", "sample_crops", "tooth_crop"]

FloatArray = npt.NDArray[np.float32]


MIN_LENGTH_PX = 24
"""A tooth label shorter than this (source pixels) gets no crop: a fragment of the labels, not a tooth."""


class CropLayout(Protocol):
    """What the crops are made by (``models.bundle.CropInput`` satisfies it): size in pixels, margins as shares of
    the tooth's length beyond its crown and beyond its apex."""

    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def crown_margin(self) -> float: ...
    @property
    def apex_margin(self) -> float: ...


def apex_row(spec: CropLayout) -> float:
    """The crop row at which the tooth's label ends (its apex), in crop pixels."""
    return spec.height * (1.0 + spec.crown_margin) / (1.0 + spec.crown_margin + spec.apex_margin)


@dataclass(frozen=True)
class ToothCrop:
    """One tooth's crop: crop pixel ``(c, r)`` (continuous, pixel edges) is source ``(x0 + c * step, y)`` with
    ``y = y0 + r * step`` (lower teeth) or ``y = y0 + (height - r) * step`` (upper teeth, ``flip``)."""

    fdi: str
    x0: float
    y0: float
    step: float
    """Source pixels per crop pixel, both ways."""
    flip: bool
    height: int
    width: int

    def to_source(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(x, y)`` crop points (shape ``(..., 2)``) to source coordinates."""
        pts = np.asarray(points, dtype=np.float64)
        x = self.x0 + pts[..., 0] * self.step
        rows = (self.height - pts[..., 1]) if self.flip else pts[..., 1]
        y = self.y0 + rows * self.step
        return np.stack([x, y], axis=-1)

    def source_box(self) -> tuple[float, float, float, float]:
        """The crop's extent in source pixels, ``(x0, y0, x1, y1)``."""
        return (self.x0, self.y0, self.x0 + self.width * self.step, self.y0 + self.height * self.step)


def crop_boxes(
    labels: npt.NDArray[np.intp],
    labels_fdi: tuple[str, ...],
    to_source: Callable[[npt.ArrayLike], npt.NDArray[np.float64]],
    spec: CropLayout,
) -> list[ToothCrop]:
    """One crop per tooth in ``labels`` (model pixels; 0 none, ``k`` the tooth ``labels_fdi[k - 1]``).

    ``to_source`` maps model ``(x, y)`` points to source ones (the ``to_source`` of the image's
    :class:`~edge.pipeline.preprocess.Prepared`). Teeth come in label order.
    """
    crops: list[ToothCrop] = []
    objects = ndimage.find_objects(np.asarray(labels, dtype=np.int32), max_label=len(labels_fdi))
    for k, found in enumerate(objects, start=1):
        if found is None:
            continue
        rows, cols = found
        (sx0, sy0), (sx1, sy1) = np.asarray(to_source([[cols.start, rows.start], [cols.stop, rows.stop]]))
        crop = tooth_crop(labels_fdi[k - 1], (float(sx0), float(sy0), float(sx1), float(sy1)), spec)
        if crop is not None:
            crops.append(crop)
    return crops


def tooth_crop(fdi: str, box: tuple[float, float, float, float], spec: CropLayout) -> ToothCrop | None:
    """The crop of the tooth ``fdi`` whose label spans ``box`` (source pixels), or None for a fragment."""
    x0, y0, x1, y1 = box
    length = y1 - y0
    if length < MIN_LENGTH_PX:
        return None
    total = length * (1.0 + spec.crown_margin + spec.apex_margin)
    step = total / spec.height
    upper = is_upper(fdi)
    top = y0 - length * (spec.apex_margin if upper else spec.crown_margin)
    left = (x0 + x1) / 2.0 - spec.width * step / 2.0
    return ToothCrop(fdi=fdi, x0=left, y0=top, step=step, flip=upper, height=spec.height, width=spec.width)


def sample_crops(
    source: FloatArray,
    crops: Sequence[ToothCrop],
    *,
    window: tuple[float, float],
    mean: float,
    std: float,
) -> FloatArray:
    """The crops of ``source`` (raw pixels, higher = denser) as a batch ``[N, 1, H, W]``, bilinear.

    Pixels are windowed to ``window`` (the image's own percentiles, as for the first network), scaled to [0, 1]
    (outside the image: 0, as the first network's letterbox) and normalised with ``mean`` and ``std``.
    """
    if not crops:
        return np.zeros((0, 1, 1, 1), np.float32)
    height, width = crops[0].height, crops[0].width
    lo, hi = window
    unit = np.zeros_like(source) if hi <= lo else (np.clip(source, lo, hi) - np.float32(lo)) * np.float32(1 / (hi - lo))
    out = np.empty((len(crops), 1, height, width), np.float32)
    centres_r = np.arange(height, dtype=np.float64) + 0.5
    centres_c = np.arange(width, dtype=np.float64) + 0.5
    for i, crop in enumerate(crops):
        xs = crop.x0 + centres_c * crop.step - 0.5
        rows = (height - centres_r) if crop.flip else centres_r
        ys = crop.y0 + rows * crop.step - 0.5
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        out[i, 0] = ndimage.map_coordinates(unit, [grid_y, grid_x], order=1, mode="constant", cval=0.0)
    out -= np.float32(mean)
    out *= np.float32(1 / std)
    return out

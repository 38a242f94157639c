"""DICOM dataset -> model tensor, and the inverse transform that maps model pixels back to source pixels.

Two pure steps, both I/O-free:

* :func:`pixels_from_dataset` decodes the pixel data (every transfer syntax ingest accepts, through pydicom's
  pylibjpeg and pyjpegls plugins), applies the modality LUT (rescale slope/intercept or a LUT), the VOI LUT or
  window centre/width when the dataset has one, masks to Bits Stored and inverts MONOCHROME1, so that higher
  means brighter means denser. Images a model cannot read raise :class:`~edge.errors.UnsupportedImage` with
  the reason.
* :func:`prepare` turns those pixels into the model's input for an input spec: clip to the image's own
  percentiles, scale to [0, 1], letterbox (aspect kept, centred, padded with 0), normalise with the spec's
  mean and std. Training, evaluation and the device all call this one function.

Coordinates are continuous pixel-edge coordinates: pixel ``i`` spans ``[i, i + 1)``, ``(x, y)`` with x to the
right and y down, so an end-exclusive box maps by the same formula as a point.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from edge.errors import UnsupportedImage

__all__ = ["InputLayout", "Prepared", "pixel_spacing_mm", "pixels_from_dataset", "prepare"]

FloatArray = npt.NDArray[np.float32]


class InputLayout(Protocol):
    """What :func:`prepare` reads from a bundle's input spec (``models.bundle.InputSpec`` satisfies it)."""

    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def window_percentiles(self) -> tuple[float, float]: ...
    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float: ...


@dataclass(frozen=True)
class Prepared:
    """A model input tensor and the letterbox transform that produced it.

    ``model = source * scale + offset`` per axis, with ``scale`` and ``offset`` as ``(x, y)``.
    """

    tensor: FloatArray
    """float32 ``[1, 1, height, width]``."""
    source_shape: tuple[int, int]
    """``(rows, columns)`` of the source image."""
    scale: tuple[float, float]
    """``(x, y)`` model pixels per source pixel (equal up to rounding of the resized size)."""
    offset: tuple[int, int]
    """``(x, y)`` padding before the image in model pixels."""
    window: tuple[float, float] = (0.0, 1.0)
    """``(lo, hi)``: the source values mapped to 0 and 1 (the image's own percentiles), for crops of the source."""

    def to_source(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(x, y)`` points (shape ``(..., 2)``) from model to source coordinates."""
        pts = np.asarray(points, dtype=np.float64)
        return (pts - np.asarray(self.offset, dtype=np.float64)) / np.asarray(self.scale, dtype=np.float64)

    def to_model(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(x, y)`` points (shape ``(..., 2)``) from source to model coordinates."""
        pts = np.asarray(points, dtype=np.float64)
        return pts * np.asarray(self.scale, dtype=np.float64) + np.asarray(self.offset, dtype=np.float64)

    def box_to_source(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """An end-exclusive ``(x0, y0, x1, y1)`` box in model pixels as the enclosing box in source pixels.

        The result is clipped to the source image, so a box reaching into the letterbox padding is cut.
        """
        (sx0, sy0), (sx1, sy1) = self.to_source([[box[0], box[1]], [box[2], box[3]]])
        rows, cols = self.source_shape
        x0 = int(np.clip(np.floor(sx0 + 1e-6), 0, cols))
        y0 = int(np.clip(np.floor(sy0 + 1e-6), 0, rows))
        x1 = int(np.clip(np.ceil(sx1 - 1e-6), x0, cols))
        y1 = int(np.clip(np.ceil(sy1 - 1e-6), y0, rows))
        return x0, y0, x1, y1


def prepare(pixels: npt.ArrayLike, spec: InputLayout) -> Prepared:
    """Window, scale, letterbox and normalise a 2-D image (higher = brighter) for a model with ``spec``."""
    image = np.asarray(pixels, dtype=np.float32)
    if image.ndim != 2 or image.shape[0] < 1 or image.shape[1] < 1:
        raise UnsupportedImage(f"expected a 2-D greyscale image, got an array of shape {image.shape}")
    finite = np.isfinite(image)
    if not finite.all():
        if not finite.any():
            raise UnsupportedImage("the image has no finite pixel values")
        image = np.where(finite, image, np.float32(np.min(image[finite])))
    lo_pct, hi_pct = spec.window_percentiles
    lo, hi = (float(v) for v in np.percentile(image, [lo_pct, hi_pct]))
    unit = np.zeros_like(image) if hi <= lo else (np.clip(image, lo, hi) - np.float32(lo)) * np.float32(1 / (hi - lo))

    rows, cols = image.shape
    fit = min(spec.height / rows, spec.width / cols)
    new_h = min(spec.height, max(1, round(rows * fit)))
    new_w = min(spec.width, max(1, round(cols * fit)))
    resized = np.asarray(Image.fromarray(unit).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    off_x, off_y = (spec.width - new_w) // 2, (spec.height - new_h) // 2
    canvas = np.zeros((spec.height, spec.width), dtype=np.float32)
    canvas[off_y : off_y + new_h, off_x : off_x + new_w] = np.clip(resized, 0.0, 1.0)
    canvas -= np.float32(spec.mean)
    canvas *= np.float32(1 / spec.std)
    return Prepared(
        tensor=canvas[np.newaxis, np.newaxis],
        source_shape=(rows, cols),
        scale=(new_w / cols, new_h / rows),
        offset=(off_x, off_y),
        window=(lo, hi),
    )


def pixels_from_dataset(ds: Dataset, modalities: Collection[str] | None = None) -> FloatArray:
    """Decode ``ds`` to a 2-D float32 image in which higher means brighter (denser).

    Raises :class:`~edge.errors.UnsupportedImage` with the reason for an image the model cannot read: no pixel
    data, a modality outside ``modalities`` (when given), colour or palette images, multi-frame images, pixel data
    that cannot be decoded. Missing optional attributes (rescale, window, VOI LUT) are simply not applied.
    """
    if "PixelData" not in ds:
        raise UnsupportedImage("the dataset has no pixel data")
    modality = str(ds.get("Modality", "") or "").strip()
    if modalities is not None and modality not in modalities:
        raise UnsupportedImage(
            f"modality {modality or '(none)'} is not one the model reads ({', '.join(sorted(modalities))})"
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    samples = _int_attr(ds, "SamplesPerPixel", 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImage(
            f"not a greyscale image (Photometric Interpretation {photometric or '(none)'}, "
            f"{samples} samples per pixel): the model reads greyscale radiographs"
        )
    frames = _int_attr(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise UnsupportedImage(f"a multi-frame image ({frames} frames): the model reads single-frame radiographs")
    try:
        stored = ds.pixel_array  # decoders mask to Bits Stored and sign-extend
    except Exception as exc:  # pydicom and its plugins raise many types for undecodable data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise UnsupportedImage(f"cannot decode the pixel data ({name}): {exc}") from exc
    if stored.ndim != 2:
        raise UnsupportedImage(f"decoded pixel data has shape {stored.shape}, expected rows x columns")
    values: npt.NDArray[Any] | None = _linear_luts(stored, ds)
    if values is None:  # a LUT sequence or a SIGMOID window: pydicom's general path (in float64)
        try:
            values = apply_modality_lut(stored, ds)
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise UnsupportedImage(f"the modality LUT (rescale slope/intercept) is invalid: {exc}") from exc
        if "VOILUTSequence" in ds or "WindowWidth" in ds:
            # a malformed VOI is ignored: prepare() windows on the image's own percentiles anyway
            with contextlib.suppress(ValueError, TypeError, AttributeError, IndexError, KeyError):
                values = apply_voi_lut(values, ds, prefer_lut=True)
    image = np.asarray(values, dtype=np.float32)
    if photometric == "MONOCHROME1":
        image = np.float32(np.nanmax(image) + np.nanmin(image)) - image
    return image


def _first_number(ds: Dataset, keyword: str) -> float:
    element = ds[keyword]
    return float(element.value[0] if element.VM > 1 else element.value)


def _linear_luts(stored: npt.NDArray[Any], ds: Dataset) -> FloatArray | None:
    """Rescale slope/intercept, then a LINEAR or LINEAR_EXACT window (PS3.3 C.11.2.1.2), in float32 and in place.

    The same output as pydicom's ``apply_modality_lut`` and ``apply_voi_lut``, which work in float64 with several
    image-sized temporaries (a 4.6 MB panoramic peaked at 67 MB, in the pipeline and again in the overlay). None
    where a Modality or VOI LUT Sequence or a SIGMOID window needs pydicom's general path; a malformed window is
    ignored, as there.
    """
    if "ModalityLUTSequence" in ds or "VOILUTSequence" in ds:
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    windowed = "WindowCenter" in ds and "WindowWidth" in ds
    if windowed and function not in ("LINEAR", "LINEAR_EXACT"):
        return None
    image = stored.astype(np.float32)
    rescaled = ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None
    slope, intercept = 1.0, 0.0
    if rescaled:
        try:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        except (TypeError, ValueError) as exc:
            raise UnsupportedImage(f"the modality LUT (rescale slope/intercept) is invalid: {exc}") from exc
        if slope != 1.0:
            image *= np.float32(slope)
        if intercept != 0.0:
            image += np.float32(intercept)
    if not windowed:
        return image
    try:
        center, width = _first_number(ds, "WindowCenter"), _first_number(ds, "WindowWidth")
        bits = int(ds.BitsStored)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):
        return image
    if function == "LINEAR":
        center, width = center - 0.5, width - 1.0
    if width < 0 or (width == 0 and function != "LINEAR") or not math.isfinite(center) or not math.isfinite(width):
        return image
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    y_min, y_max = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    if rescaled:
        y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
    y_range = y_max - y_min
    if width == 0:  # a LINEAR window 1 wide: a threshold
        threshold: FloatArray = np.where(image <= np.float32(center), np.float32(y_min), np.float32(y_max))
        return threshold
    np.clip(image, center - width / 2, center + width / 2, out=image)
    image -= np.float32(center)
    image *= np.float32(y_range / width)
    image += np.float32(0.5 * y_range + y_min)
    return image


def pixel_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """``(row, column)`` spacing in mm for measurements, or None when the dataset gives none that is valid.

    Row spacing is the vertical (y) distance between rows, as in DICOM. Pixel Spacing (calibrated to the patient)
    is preferred; else Imager Pixel Spacing (at the detector), divided by the Estimated Radiographic
    Magnification Factor when present.
    """
    spacing = _spacing_pair(ds.get("PixelSpacing"))
    if spacing is not None:
        return spacing
    spacing = _spacing_pair(ds.get("ImagerPixelSpacing"))
    if spacing is None:
        return None
    try:
        magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 1.0)
    except (TypeError, ValueError):
        magnification = 1.0
    if not math.isfinite(magnification) or not 0.1 <= magnification <= 10.0:
        magnification = 1.0
    return spacing[0] / magnification, spacing[1] / magnification


def _spacing_pair(value: Any) -> tuple[float, float] | None:
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in (row, col)):
        return None
    return row, col


def _int_attr(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnsupportedImage(f"{keyword} is not an integer: {value!r}") from None

"""Preprocessing: windowing, letterbox and its inverse, DICOM decoding across transfer syntaxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from edge.errors import UnsupportedImage
from edge.pipeline.preprocess import pixel_spacing_mm, pixels_from_dataset, prepare


def _read(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return pydicom.dcmread(path)


@dataclass(frozen=True)
class Spec:
    height: int = 64
    width: int = 128
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    mean: float = 0.5
    std: float = 0.25


def test_prepare_shape_dtype_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    prepared = prepare(rng.uniform(0, 4095, size=(300, 600)), Spec())
    assert prepared.tensor.shape == (1, 1, 64, 128)
    assert prepared.tensor.dtype == np.float32
    unit = prepared.tensor * 0.25 + 0.5
    assert unit.min() >= -1e-6
    assert unit.max() <= 1 + 1e-6
    assert prepared.offset == (0, 0)
    assert prepared.scale == pytest.approx((128 / 600, 64 / 300))


def test_letterbox_pads_centred_with_zero() -> None:
    image = np.full((100, 100), 7.0)
    image[0, 0] = 0.0  # non-constant so scaling is defined
    prepared = prepare(image, Spec(window_percentiles=(0.0, 100.0)))
    assert prepared.offset == (32, 0)
    unit = prepared.tensor[0, 0] * 0.25 + 0.5
    assert np.allclose(unit[:, :32], 0.0)
    assert np.allclose(unit[:, 96:], 0.0)
    assert unit[32:, 40:90].mean() > 0.99


def test_inverse_transform_round_trips_points_and_boxes() -> None:
    prepared = prepare(np.arange(200 * 300, dtype=float).reshape(200, 300), Spec())
    points = np.array([[0.0, 0.0], [300.0, 200.0], [150.5, 10.25]])
    assert np.allclose(prepared.to_source(prepared.to_model(points)), points)
    # the whole model canvas maps to (at least) the whole source image, clipped to it
    assert prepared.box_to_source((0, 0, 128, 64)) == (0, 0, 300, 200)
    x0, y0, x1, y1 = prepared.box_to_source((10, 10, 20, 20))
    assert 0 <= x0 < x1 <= 300
    assert 0 <= y0 < y1 <= 200


def test_a_bright_spot_lands_where_it_was() -> None:
    image = np.zeros((400, 1000))
    image[300:320, 700:740] = 1000.0
    prepared = prepare(image, Spec(window_percentiles=(0.0, 100.0)))
    ys, xs = np.nonzero(prepared.tensor[0, 0] > 0.0)
    box = prepared.box_to_source((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert box[0] == pytest.approx(700, abs=8)
    assert box[1] == pytest.approx(300, abs=8)
    assert box[2] == pytest.approx(740, abs=8)
    assert box[3] == pytest.approx(320, abs=8)


def test_constant_and_non_finite_images_do_not_crash() -> None:
    assert np.allclose(prepare(np.ones((10, 10)), Spec()).tensor[0, 0, :, 32:96] * 0.25 + 0.5, 0.0)
    image = np.ones((10, 20))
    image[0, 0] = np.nan
    assert np.isfinite(prepare(image, Spec()).tensor).all()
    with pytest.raises(UnsupportedImage, match="no finite"):
        prepare(np.full((4, 4), np.nan), Spec())


@pytest.mark.parametrize("shape", [(3, 10, 10), (10,), (0, 5)])
def test_prepare_rejects_non_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(UnsupportedImage, match="2-D"):
        prepare(np.zeros(shape), Spec())


# --- DICOM decoding ----------------------------------------------------------------------------------------------

# MR_small in every encoding pydicom ships: the decoded image must be the same in all of them.
MR_SMALL_ENCODINGS = [
    "MR_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_expb.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless (pylibjpeg-rle)
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (pylibjpeg-openjpeg)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (pyjpegls)
]


@pytest.mark.parametrize("name", MR_SMALL_ENCODINGS)
def test_lossless_transfer_syntaxes_decode_identically(name: str) -> None:
    reference = pixels_from_dataset(_read("MR_small.dcm"))
    image = pixels_from_dataset(_read(name))
    assert image.dtype == np.float32
    assert image.shape == (64, 64)
    assert np.array_equal(image, reference)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("JPGExtended.dcm", (1024, 256)),  # JPEG extended 12-bit (pylibjpeg-libjpeg)
        ("693_J2KI.dcm", (512, 512)),  # JPEG 2000 lossy, 14 bits stored
        ("JPEGLSNearLossless_16.dcm", (50, 10)),  # JPEG-LS near-lossless
        ("image_dfl.dcm", (512, 512)),  # deflated explicit VR little endian
        ("J2K_pixelrep_mismatch.dcm", (512, 512)),  # 13 bits stored, signed
    ],
)
def test_other_transfer_syntaxes_decode(name: str, shape: tuple[int, int]) -> None:
    image = pixels_from_dataset(_read(name))
    assert image.shape == shape
    assert np.isfinite(image).all()
    assert image.max() > image.min()


def test_modality_lut_is_applied() -> None:
    ds = _read("CT_small.dcm")  # rescale slope 1, intercept -1024
    assert np.array_equal(pixels_from_dataset(ds), ds.pixel_array.astype(np.float32) - 1024)


def test_window_is_applied_when_present() -> None:
    ds = _read("MR_small.dcm")
    ds.WindowCenter, ds.WindowWidth = int(np.median(ds.pixel_array)), 50
    image = pixels_from_dataset(ds)
    assert len(np.unique(image)) < len(np.unique(ds.pixel_array))
    assert image.min() == -32768  # below the window: the bottom of the signed 16-bit output range
    assert image.max() == 32767


def test_malformed_window_is_ignored() -> None:
    ds = _read("MR_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 100, 0
    assert np.array_equal(pixels_from_dataset(ds), ds.pixel_array.astype(np.float32))


def test_monochrome1_is_inverted() -> None:
    ds = _read("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    plain = pixels_from_dataset(ds)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = pixels_from_dataset(ds)
    assert np.array_equal(inverted, plain.max() + plain.min() - plain)


def test_bits_above_bits_stored_are_ignored() -> None:
    ds = _read("examples_overlay.dcm")  # 16 allocated, 12 stored, unsigned
    clean = pixels_from_dataset(ds)
    raw = np.frombuffer(ds.PixelData, dtype="<u2") | np.uint16(0xF000)
    ds.PixelData = raw.tobytes()
    assert np.array_equal(pixels_from_dataset(ds), clean)


def test_missing_optional_tags_do_not_crash() -> None:
    ds = _read("MR_small.dcm")
    for keyword in ("Modality", "WindowCenter", "WindowWidth", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    assert pixels_from_dataset(ds).shape == (64, 64)
    assert pixel_spacing_mm(ds) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "not a greyscale image"),  # a colour photo
        ("examples_palette.dcm", "PALETTE COLOR"),
        ("rtdose.dcm", "multi-frame"),
        ("rtplan.dcm", "no pixel data"),
        ("JPEG-lossy.dcm", "cannot decode"),  # corrupt JPEG stream
    ],
)
def test_images_the_model_cannot_read_raise_with_reason(name: str, reason: str) -> None:
    with pytest.raises(UnsupportedImage, match=reason):
        pixels_from_dataset(_read(name))


def test_malformed_number_of_frames_raises_with_reason() -> None:
    ds = _read("badVR.dcm")  # Number of Frames "1A"
    with pytest.warns(UserWarning, match="Invalid value"), pytest.raises(UnsupportedImage, match="NumberOfFrames"):
        pixels_from_dataset(ds)


def test_wrong_modality_raises_with_reason() -> None:
    with pytest.raises(UnsupportedImage, match=r"modality MR is not one the model reads \(DX, PX\)"):
        pixels_from_dataset(_read("MR_small.dcm"), modalities=("PX", "DX"))
    assert pixels_from_dataset(_read("MR_small.dcm"), modalities=("MR",)).shape == (64, 64)


def test_spacing_prefers_pixel_spacing_then_corrected_imager_spacing() -> None:
    ds = Dataset()
    assert pixel_spacing_mm(ds) is None
    ds.ImagerPixelSpacing = [0.2, 0.1]
    assert pixel_spacing_mm(ds) == pytest.approx((0.2, 0.1))
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    assert pixel_spacing_mm(ds) == pytest.approx((0.16, 0.08))
    ds.PixelSpacing = [0.15, 0.125]
    assert pixel_spacing_mm(ds) == pytest.approx((0.15, 0.125))


@pytest.mark.parametrize("bad", [[0, 0.1], [0.1], [-1, 1], [float("nan"), 1]])
def test_invalid_spacing_is_none(bad: list[object]) -> None:
    ds = Dataset()
    ds.ImagerPixelSpacing = bad
    assert pixel_spacing_mm(ds) is None


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT"])
@pytest.mark.parametrize(("slope", "intercept"), [(1.0, 0.0), (2.0, -100.0)])
def test_rescale_and_linear_window_match_pydicom_in_a_fraction_of_the_memory(
    function: str, slope: float, intercept: float
) -> None:
    import tracemalloc

    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    ds = _read("MR_small.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.VOILUTFunction = function
    ds.WindowCenter, ds.WindowWidth = float(np.median(ds.pixel_array)) * slope + intercept, 300.0
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True)
    stored = ds.pixel_array
    tracemalloc.start()
    try:
        image = pixels_from_dataset(ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-2 * abs(slope))
    assert peak < 3 * stored.size * 4 + 65536  # the float32 image and little else (pydicom: ~15x the stored image)


def test_a_linear_window_one_wide_thresholds_as_pydicom_does() -> None:
    from pydicom.pixels.processing import apply_voi_lut

    ds = _read("MR_small.dcm")
    ds.WindowCenter, ds.WindowWidth = float(np.median(ds.pixel_array)), 1.0
    expected = apply_voi_lut(ds.pixel_array, ds, prefer_lut=True)
    image = pixels_from_dataset(ds)
    assert set(np.unique(image)) == {-32768.0, 32767.0}
    np.testing.assert_array_equal(image, expected)

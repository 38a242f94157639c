"""Preprocessing: windowing, letterbox and its inverse, DICOM decoding across transfer syntaxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from edge.errors import UnsupportedImage
from edge.pipeline.preprocess import prepare


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


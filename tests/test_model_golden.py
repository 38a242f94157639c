"""Golden vectors: a backend that reproduces the outputs passes; drift, a wrong shape or a failure does not."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pytest

from edge.errors import BackendError, BundleError
from models.bundle import Bundle, GoldenSpec, pack_bundle, parse_bundle
from models.golden import build_golden, check_golden, read_golden
from tests.test_model_bundle import FILES, MANIFEST

Arrays = Mapping[str, npt.NDArray[np.generic]]


def _network(batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
    """A stand-in network: deterministic outputs derived from the input."""
    return {"teeth": np.repeat(batch, 3, axis=1) * 2.0, "findings": np.tanh(batch) - 1.0}


def _bundle(golden: bytes, atol: float = 0.05) -> Bundle:
    manifest = dataclasses.replace(MANIFEST, golden=(GoldenSpec("golden/a.npz", atol),))
    return parse_bundle(pack_bundle(manifest, {**FILES, "golden/a.npz": golden}))


def _golden() -> bytes:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(2, 1, 16, 32)).astype(np.float16).astype(np.float32)
    return build_golden(inputs, _network(inputs), samples=256, seed=1)


def test_reproducing_backend_passes() -> None:
    report = check_golden(_bundle(_golden()), _network)
    assert report.ok
    assert report.reason is None
    assert {c.output for c in report.cases} == {"teeth", "findings"}
    assert all(c.max_abs_error == 0.0 for c in report.cases)


def test_drift_within_tolerance_passes_and_beyond_fails() -> None:
    bundle = _bundle(_golden(), atol=0.05)

    def near(batch: npt.NDArray[np.float32]) -> Arrays:
        return {k: v + 0.04 for k, v in _network(batch).items()}

    def far(batch: npt.NDArray[np.float32]) -> Arrays:
        out = _network(batch)
        return {"teeth": out["teeth"], "findings": out["findings"] + 0.2}

    assert check_golden(bundle, near).ok
    report = check_golden(bundle, far)
    assert not report.ok
    assert report.reason is not None
    assert "findings: max abs error 0.2 > atol 0.05" in report.reason


def test_wrong_shape_missing_output_and_nan_fail() -> None:
    bundle = _bundle(_golden())

    def wrong_shape(batch: npt.NDArray[np.float32]) -> Arrays:
        out = _network(batch)
        return {"teeth": out["teeth"][:, :2], "findings": out["findings"]}

    def missing(batch: npt.NDArray[np.float32]) -> Arrays:
        return {"teeth": _network(batch)["teeth"]}

    def nan(batch: npt.NDArray[np.float32]) -> Arrays:
        return {k: np.full_like(v, np.nan) for k, v in _network(batch).items()}

    assert "shape (2, 2, 16, 32), expected (2, 3, 16, 32)" in (check_golden(bundle, wrong_shape).reason or "")
    assert "findings: output missing" in (check_golden(bundle, missing).reason or "")
    assert "non-finite" in (check_golden(bundle, nan).reason or "")


def test_backend_failure_is_a_failed_report() -> None:
    def broken(batch: npt.NDArray[np.float32]) -> Arrays:
        raise BackendError("no GPU")

    report = check_golden(_bundle(_golden()), broken)
    assert not report.ok
    assert "the backend failed: no GPU" in (report.reason or "")


def test_malformed_golden_file_is_a_bundle_error() -> None:
    with pytest.raises(BundleError, match=r"not a readable \.npz"):
        check_golden(_bundle(b"garbage"), _network)


def test_inputs_must_survive_float16() -> None:
    with pytest.raises(ValueError, match="float16"):
        build_golden(np.full((1, 1, 2, 2), 0.1, np.float32), {}, 4, 0)
    inputs, expected = read_golden(_golden(), "a")
    assert inputs.shape == (2, 1, 16, 32)
    assert expected["teeth"][2] == (2, 3, 16, 32)

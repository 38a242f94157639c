"""Golden vectors: prove that a bundle's network computes what it computed when the bundle was made.

A golden file (``golden/*.npz`` in the bundle) holds an ``input`` batch and, for each output, the expected values
at a fixed random sample of positions (``<output>.index``: flat indices, ``<output>.expected``: values,
``<output>.shape``: the full output shape). Keeping a sample rather than whole outputs keeps a bundle small while
still touching every channel and region. :func:`check_golden` runs the input through any backend (a callable)
and compares; it is pure apart from calling ``run``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.bundle import Bundle
from models.errors import BundleError, RunError

__all__ = ["GoldenCase", "GoldenReport", "Runner", "build_golden", "check_golden", "read_golden"]

Runner = Callable[[npt.NDArray[np.float32]], Mapping[str, npt.NDArray[np.generic]]]
"""Runs a batch through a backend: input ``[N, C, H, W]`` float32 -> named outputs."""


@dataclass(frozen=True)
class GoldenCase:
    """One output of one golden file."""

    file: str
    output: str
    max_abs_error: float
    atol: float
    error: str | None = None
    """Why the case could not be compared (missing output, wrong shape, the backend failed), if so."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.max_abs_error <= self.atol


@dataclass(frozen=True)
class GoldenReport:
    """The outcome of every golden case of a bundle on one backend."""

    cases: tuple[GoldenCase, ...]

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(case.ok for case in self.cases)

    @property
    def reason(self) -> str | None:
        """Why the bundle failed its golden vectors, or ``None`` when it passed."""
        if not self.cases:
            return "the bundle has no golden vectors"
        for case in self.cases:
            if case.error is not None:
                return f"{case.file} {case.output}: {case.error}"
            if not case.ok:
                return f"{case.file} {case.output}: max abs error {case.max_abs_error:.4g} > atol {case.atol:g}"
        return None


def build_golden(
    inputs: npt.NDArray[np.float32], outputs: Mapping[str, npt.NDArray[np.generic]], samples: int, seed: int
) -> bytes:
    """A golden file for ``inputs`` and the ``outputs`` a reference backend gave for them.

    ``inputs`` must be exactly representable in float16 (it is stored as float16 to keep bundles small).
    """
    if not np.array_equal(inputs.astype(np.float16).astype(np.float32), inputs):
        raise ValueError("golden inputs must be exactly representable in float16")
    rng = np.random.default_rng(seed)
    arrays: dict[str, npt.NDArray[np.generic]] = {"input": inputs.astype(np.float16)}
    for name, value in outputs.items():
        flat = np.asarray(value, dtype=np.float32).reshape(-1)
        index = np.sort(rng.choice(flat.size, size=min(samples, flat.size), replace=False)).astype(np.int64)
        arrays[f"{name}.index"] = index
        arrays[f"{name}.expected"] = flat[index]
        arrays[f"{name}.shape"] = np.asarray(np.shape(value), dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def read_golden(
    data: bytes, name: str
) -> tuple[npt.NDArray[np.float32], dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], tuple[int, ...]]]]:
    """``(input, {output: (index, expected, shape)})`` of a golden file; :class:`BundleError` if malformed."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"golden file {name} is not a readable .npz: {exc}") from exc
    if "input" not in arrays:
        raise BundleError(f"golden file {name} has no input")
    expected: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], tuple[int, ...]]] = {}
    for key, value in arrays.items():
        if key.endswith(".expected"):
            out = key.removesuffix(".expected")
            if f"{out}.index" not in arrays or f"{out}.shape" not in arrays:
                raise BundleError(f"golden file {name}: output {out} lacks its index or shape")
            expected[out] = (
                arrays[f"{out}.index"].astype(np.int64),
                value.astype(np.float32),
                tuple(int(v) for v in arrays[f"{out}.shape"]),
            )
    return arrays["input"].astype(np.float32), expected


def check_golden(bundle: Bundle, run: Runner) -> GoldenReport:
    """Run every golden input of the network ``bundle`` views through ``run`` and compare with the expected outputs.

    A backend error (:class:`~models.errors.RunError` from ``run``: the agent's ``BackendError`` is one), a missing
    output, a wrong shape or a non-finite value fails the case with that reason rather than raising.
    """
    cases: list[GoldenCase] = []
    for spec in bundle.golden:
        inputs, expected = read_golden(bundle.files[spec.file], spec.file)
        try:
            outputs = run(inputs)
        except RunError as exc:
            cases.append(GoldenCase(spec.file, "*", float("inf"), spec.atol, f"the backend failed: {exc}"))
            continue
        for name, (index, values, shape) in sorted(expected.items()):
            if name not in outputs:
                cases.append(GoldenCase(spec.file, name, float("inf"), spec.atol, "output missing"))
                continue
            got = np.asarray(outputs[name], dtype=np.float32)
            if got.shape != shape:
                cases.append(
                    GoldenCase(spec.file, name, float("inf"), spec.atol, f"shape {got.shape}, expected {shape}")
                )
                continue
            if index.size and (index.min() < 0 or index.max() >= got.size):
                cases.append(GoldenCase(spec.file, name, float("inf"), spec.atol, "golden index out of range"))
                continue
            sample = got.reshape(-1)[index]
            if not np.isfinite(sample).all():
                cases.append(GoldenCase(spec.file, name, float("inf"), spec.atol, "non-finite values"))
                continue
            error = float(np.max(np.abs(sample - values))) if values.size else 0.0
            cases.append(GoldenCase(spec.file, name, error, spec.atol))
    return GoldenReport(tuple(cases))

"""Choosing a backend for a bundle: the best available kind whose output matches the bundle's golden vectors.

``auto`` tries TensorRT, then ONNX Runtime on the GPU, then ONNX Runtime on the CPU, and takes the first that is
available, loads, and passes :func:`models.golden.check_golden`. A forced kind is used only if it does all three;
otherwise :class:`~edge.errors.BackendError` says why. A bundle that fails its golden vectors on a backend is never
used on that backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from edge.errors import BackendError
from edge.logs import event
from edge.pipeline.backends.base import KINDS, Backend, BackendFactory, BackendOptions
from edge.pipeline.backends.ort import OrtCpuFactory, OrtGpuFactory
from edge.pipeline.backends.trt import TensorRtFactory
from models.bundle import Bundle
from models.golden import check_golden

__all__ = ["BackendChoice", "default_factories", "select_backend"]

log = logging.getLogger("edge.pipeline.backends")

BackendChoice = Literal["auto", "tensorrt", "onnxruntime-gpu", "onnxruntime-cpu"]


def default_factories() -> tuple[BackendFactory, ...]:
    """One factory per kind, best first."""
    factories: tuple[BackendFactory, ...] = (TensorRtFactory(), OrtGpuFactory(), OrtCpuFactory())
    assert tuple(f.kind for f in factories) == KINDS
    return factories


def select_backend(
    bundle: Bundle,
    choice: BackendChoice,
    options: BackendOptions,
    factories: Sequence[BackendFactory] | None = None,
) -> Backend:
    """Load ``bundle`` on the backend ``choice`` names (``auto``: the best that works)."""
    candidates = list(default_factories() if factories is None else factories)
    if choice != "auto":
        candidates = [f for f in candidates if f.kind == choice]
        if not candidates:
            raise BackendError(f"no backend of kind {choice!r}")
    refusals: list[str] = []
    for factory in candidates:
        reason = _try(factory, bundle, options)
        if isinstance(reason, str):
            refusals.append(f"{factory.kind}: {reason}")
            event(log, "backend not used", level=logging.INFO, backend=factory.kind, reason=reason)
            continue
        event(log, "backend selected", backend=reason.name, model=bundle.manifest.id, version=bundle.manifest.version)
        return reason
    raise BackendError(f"no usable backend for {bundle.manifest.id}: " + "; ".join(refusals))


def _try(factory: BackendFactory, bundle: Bundle, options: BackendOptions) -> Backend | str:
    """The loaded backend, or why it cannot be used."""
    unavailable = factory.unavailable_reason()
    if unavailable is not None:
        return unavailable
    try:
        backend = factory.load(bundle, options)
    except BackendError as exc:
        return f"cannot load: {exc}"
    report = check_golden(bundle, backend.run)
    if not report.ok:
        backend.close()
        return f"golden vectors fail: {report.reason}"
    return backend

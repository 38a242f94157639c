"""The inference backend kinds: one table, best first, each with its factory and the options it reads.

:data:`BACKENDS` is the one source; everything else reads it. ``[pipeline] backend`` in :mod:`edge.config` and
``btt-edge analyze --backend`` take :data:`CHOICES` (``auto`` or a kind; a name not listed is refused with the
list), ``auto`` selection (:func:`~edge.pipeline.backends.selection.select_backend`) tries the kinds in this
order, and ``btt-edge doctor`` and the Jetson platform check ask each kind's factory whether it can run here
(``unavailable_reason``). Bundle variants name the kinds that may run them (``docs/bundles.md``).

To add a backend: write its module (``edge/pipeline/backends/<name>.py``: a
:class:`~edge.pipeline.backends.base.BackendFactory` and its :class:`~edge.pipeline.backends.base.Backend`), then
add its name to :data:`BackendKind` and its :class:`BackendSpec` to :data:`BACKENDS` below, where its place is its
rank in ``auto``.

Nothing here imports a runtime when this module loads: the configuration reads it (and so every ``btt-edge``
command), and a factory's module imports numpy and its runtime. Each kind's ``factory`` imports it when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from edge.pipeline.backends.base import BackendFactory

__all__ = ["BACKENDS", "CHOICES", "KINDS", "BackendChoice", "BackendKind", "BackendSpec"]

BackendKind = Literal["tensorrt", "onnxruntime-gpu", "onnxruntime-cpu"]
"""Every kind's name (the same names as :data:`BACKENDS`, in its order)."""
BackendChoice = Literal["auto", BackendKind]
"""What ``[pipeline] backend`` takes: ``auto`` (the best that works) or a kind (that one or an error)."""


@dataclass(frozen=True)
class BackendSpec:
    """One kind of inference backend."""

    kind: BackendKind
    summary: str
    factory: Callable[[], BackendFactory]
    """Makes its factory (importing its module and runtime only then)."""
    options: tuple[str, ...] = ()
    """The ``[pipeline]`` keys it reads besides those every backend reads (``bundle_path``, ``variants``)."""


def _tensorrt() -> BackendFactory:
    from edge.pipeline.backends.trt import TensorRtFactory

    return TensorRtFactory()


def _onnxruntime_gpu() -> BackendFactory:
    from edge.pipeline.backends.ort import OrtGpuFactory

    return OrtGpuFactory()


def _onnxruntime_cpu() -> BackendFactory:
    from edge.pipeline.backends.ort import OrtCpuFactory

    return OrtCpuFactory()


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("tensorrt", "native TensorRT 10 engines, cached per GPU", _tensorrt, ("tensorrt_precision",)),
    BackendSpec("onnxruntime-gpu", "ONNX Runtime with its TensorRT or CUDA provider", _onnxruntime_gpu, ("threads",)),
    BackendSpec("onnxruntime-cpu", "ONNX Runtime on the CPU: always available", _onnxruntime_cpu, ("threads",)),
)
"""Every kind, best first: the order in which ``auto`` tries them."""

KINDS: tuple[BackendKind, ...] = tuple(b.kind for b in BACKENDS)
CHOICES: tuple[BackendChoice, ...] = ("auto", *KINDS)

"""The backend interface: a loaded network that maps an input batch to named outputs.

A :class:`BackendFactory` says whether its kind can run here (``unavailable_reason``) and loads a bundle's
network into a :class:`Backend`. Errors of the runtime library are raised as :class:`~edge.errors.BackendError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:  # importing the package stays light: the configuration reads its registry
    import numpy as np
    import numpy.typing as npt

    from edge.pipeline.backends.registry import BackendKind
    from models.bundle import Bundle

__all__ = ["Backend", "BackendFactory", "BackendOptions", "Outputs", "Precision"]

Precision = Literal["fp32", "fp16", "int8"]

Outputs: TypeAlias = "dict[str, npt.NDArray[np.float32]]"


@dataclass(frozen=True)
class BackendOptions:
    """How to load a network; each backend reads what applies to it."""

    threads: int = 2
    """Intra-op threads (ONNX Runtime on the CPU)."""
    engine_cache_dir: Path | None = None
    """Where TensorRT keeps built engines (None: build in memory every start)."""
    precision: Precision = "fp16"
    """TensorRT engine precision."""
    calibration: npt.NDArray[np.float32] | None = None
    """Prepared images ``[N, C, H, W]`` for TensorRT INT8 calibration."""
    optimized_model_path: Path | None = None
    """ONNX Runtime writes its optimised graph here when set (for inspection and benchmarks)."""
    variants: bool = True
    """Also try the bundle's variants for the backend (e.g. its INT8 network on ONNX Runtime's CPU) and keep the
    fastest network that passes its golden vectors; False: the bundle's own network only."""


class Backend(Protocol):
    """A network loaded on one runtime. ``run`` is called from one thread at a time."""

    @property
    def name(self) -> str:
        """The backend kind and, where useful, its device (e.g. ``onnxruntime-cpu``)."""
        ...

    @property
    def precision(self) -> str:
        """The precision it computes in: ``fp32``, a bundle variant's (``int8``), or a TensorRT engine's."""
        ...

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        """Run ``batch`` (float32 ``[N, C, H, W]``) and return every output by name."""
        ...

    def close(self) -> None:
        """Release the runtime's resources."""
        ...


class BackendFactory(Protocol):
    """Creates backends of one kind."""

    @property
    def kind(self) -> BackendKind: ...

    def unavailable_reason(self) -> str | None:
        """Why this kind cannot run here (library missing, no GPU), or None when it can."""
        ...

    def load(self, bundle: Bundle, options: BackendOptions) -> Backend:
        """Load the bundle's verified network; :class:`~edge.errors.BackendError` when that fails."""
        ...

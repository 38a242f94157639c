"""A working fake backend for tests: computes outputs with a plain function, counts calls, can be told to fail."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edge.errors import BackendError
from edge.pipeline.backends.base import Backend, BackendOptions, Outputs
from edge.pipeline.backends.registry import BackendKind
from models.bundle import Bundle

__all__ = ["FakeBackend", "FakeFactory"]

Compute = Callable[[npt.NDArray[np.float32]], Outputs]


class FakeBackend:
    """Runs ``compute`` on each batch; raises :class:`BackendError` while ``fail_with`` is set."""

    def __init__(self, compute: Compute, name: str = "fake", precision: str = "fp32") -> None:
        self._compute = compute
        self._name = name
        self._precision = precision
        self.calls = 0
        self.closed = False
        self.fail_with: str | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def precision(self) -> str:
        return self._precision

    def run(self, batch: npt.NDArray[np.float32]) -> Outputs:
        self.calls += 1
        if self.fail_with is not None:
            raise BackendError(self.fail_with)
        return {k: np.asarray(v, dtype=np.float32) for k, v in self._compute(batch).items()}

    def close(self) -> None:
        self.closed = True


class FakeFactory:
    """A factory of one kind that is available unless ``unavailable`` says why, and loads a :class:`FakeBackend`."""

    def __init__(self, kind: BackendKind, compute: Compute, unavailable: str | None = None) -> None:
        self._kind = kind
        self._compute = compute
        self.unavailable = unavailable
        self.loaded: list[FakeBackend] = []

    @property
    def kind(self) -> BackendKind:
        return self._kind

    def unavailable_reason(self) -> str | None:
        return self.unavailable

    def load(self, bundle: Bundle, options: BackendOptions) -> Backend:
        backend = FakeBackend(self._compute, self._kind, bundle.precision)
        self.loaded.append(backend)
        return backend

"""Choosing a backend for a bundle: the best available kind whose output matches the bundle's golden vectors.

``auto`` tries TensorRT, then ONNX Runtime on the GPU, then ONNX Runtime on the CPU, and takes the first that is
available, loads, and passes :func:`models.golden.check_golden`. A forced kind is used only if it does all three;
otherwise :class:`~edge.errors.BackendError` says why. A bundle that fails its golden vectors on a backend is never
used on that backend.

Where the bundle has variants for a kind (its INT8 network for ONNX Runtime on the CPU), each is loaded and checked
against its own golden vectors beside the bundle's network, and the fastest that passes is kept: on the golden
input of the bundle's network, the median of :data:`TIMING_ROUNDS` runs each, taken in turn. Whether INT8 is
faster depends on the CPU (bench/RESULTS.md: 20-30 % faster on a VM with AVX-512 VNNI, slower on another), and on a
CPU whose 8-bit kernels compute differently the variant fails its golden vectors and the bundle's own network runs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge.errors import BackendError
from edge.pipeline.backends.registry import BACKENDS, BackendChoice
from runtime.logs import event

if TYPE_CHECKING:
    from edge.pipeline.backends.base import Backend, BackendFactory, BackendOptions
    from models.bundle import Bundle

__all__ = ["TIMING_ROUNDS", "default_factories", "select_backend"]

log = logging.getLogger("edge.pipeline.backends")

TIMING_ROUNDS = 3
"""Runs of the golden input per network when a kind has more than one that passes (after the golden check's run,
which warms each up)."""


def default_factories() -> tuple[BackendFactory, ...]:
    """One factory per kind of :data:`~edge.pipeline.backends.registry.BACKENDS`, best first."""
    return tuple(b.factory() for b in BACKENDS)


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
        event(
            log,
            "backend selected",
            backend=reason.name,
            precision=reason.precision,
            model=bundle.manifest.id,
            version=bundle.manifest.version,
        )
        return reason
    raise BackendError(f"no usable backend for {bundle.manifest.id}: " + "; ".join(refusals))


def _try(factory: BackendFactory, bundle: Bundle, options: BackendOptions) -> Backend | str:
    """The loaded backend (the fastest of the bundle's networks for this kind), or why it cannot be used."""
    from models.golden import check_golden  # numpy: loaded with the first backend, not with the package

    unavailable = factory.unavailable_reason()
    if unavailable is not None:
        return unavailable
    networks = bundle.networks_for(factory.kind)[: None if options.variants else 1]
    passed: list[tuple[Backend, Bundle]] = []
    refusals: list[str] = []
    for network in networks:
        try:
            backend = factory.load(network, options)
        except BackendError as exc:
            reason = f"cannot load: {exc}"
        else:
            report = check_golden(network, backend.run)
            if report.ok:
                passed.append((backend, network))
                continue
            backend.close()
            reason = f"golden vectors fail: {report.reason}"
        # a variant refused while another network runs is seen only here
        event(log, "network not used", level=logging.INFO, backend=factory.kind, precision=network.precision,
              reason=reason)  # fmt: skip
        refusals.append(f"{network.precision} network: {reason}" if len(networks) > 1 else reason)
    if not passed:
        return "; ".join(refusals)
    return _fastest(factory.kind, passed)


def _fastest(kind: str, passed: list[tuple[Backend, Bundle]]) -> Backend | str:
    """The backend that ran its network's golden input fastest, or why none could; the others are closed.

    One that fails while being timed is left out (the golden check had run it once already).
    """
    from models.golden import read_golden

    if len(passed) == 1:
        return passed[0][0]
    first = passed[0][1].golden[0].file
    batch = read_golden(passed[0][1].files[first], first)[0]
    times: dict[int, list[float]] = {i: [] for i in range(len(passed))}
    failures: list[str] = []
    for _ in range(TIMING_ROUNDS):
        for i in list(times):
            backend, network = passed[i]
            start = time.perf_counter()
            try:
                backend.run(batch)
            except BackendError as exc:
                failures.append(f"{network.precision} network: failed while timed: {exc}")
                event(log, "network not used", level=logging.WARNING, backend=kind, precision=network.precision,
                      reason=f"failed while timed: {exc}")  # fmt: skip
                del times[i]
                continue
            times[i].append(time.perf_counter() - start)
    best = min(times, key=lambda i: statistics.median(times[i])) if times else None
    if best is not None:
        spent_ms = " ".join(f"{passed[i][1].precision}={statistics.median(t) * 1000:.1f}" for i, t in times.items())
        event(log, "networks timed", backend=kind, median_ms=spent_ms, chosen=passed[best][1].precision)
    for i, (backend, _) in enumerate(passed):
        if i != best:
            backend.close()
    return "; ".join(failures) if best is None else passed[best][0]

"""The health check a bundle must pass on this device before it may become active.

The bundle is loaded the way the pipeline will load it (``load``: bundle verification, backend selection, on a
GPU the TensorRT engine built and cached under ``<data_dir>/engines``), then its golden vectors are run on that
backend (those of the network it runs: the bundle's own or a variant's) and compared within their tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import EdgeError, ModelError
from models.golden import check_golden
from ota.errors import HealthCheckFailed

if TYPE_CHECKING:
    from edge.pipeline.analyzer import Analyzer

__all__ = ["AnalyzerLoader", "health_check"]

AnalyzerLoader = Callable[[Path], "Analyzer"]
"""Loads the bundle at a path on the device's backend (``open_analyzer`` with that bundle path): the agent passes it
in (:func:`edge.agent.updater_for`), so ``ota`` never imports the pipeline."""


def health_check(load: AnalyzerLoader, bundle_dir: Path) -> str:
    """Load ``bundle_dir`` and check its golden vectors; return the backend's name or raise
    :class:`HealthCheckFailed` with the reason."""
    try:
        analyzer = load(bundle_dir)
    except (EdgeError, ModelError) as exc:
        raise HealthCheckFailed(f"the bundle does not load on this device: {exc}") from exc
    try:
        backend = analyzer.backend
        report = check_golden(analyzer.bundle.network_for(backend.name, backend.precision), backend.run)
    except (EdgeError, ModelError) as exc:
        raise HealthCheckFailed(f"golden vectors cannot be read: {exc}") from exc
    finally:
        analyzer.close()
    if not report.ok:
        raise HealthCheckFailed(f"golden vectors fail on {analyzer.backend.name}: {report.reason}")
    return analyzer.backend.name

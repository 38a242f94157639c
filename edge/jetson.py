"""Jetson platform checks for ``btt-edge doctor``: is this a Jetson, and is its GPU stack wired the way it must be.

On a Jetson, CUDA and TensorRT come from JetPack (``python3-libnvinfer``), not from PyPI, so the agent's venv must
see the system site packages, the service user must be in the groups that open the GPU nodes, and the Python must
be the one JetPack's bindings are built for (3.10 on JetPack 6). See docs/jetson.md.

:func:`gather_facts` reads the machine (files under ``root``, imports, ``os.access``); :func:`assess` is the pure
core that turns those facts into checks, each with what to do when it fails. Off a Jetson only the generic checks
apply (Python version, the backends' availability), and they never fail for the lack of a GPU.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PlatformCheck", "PlatformFacts", "assess", "gather_facts", "parse_l4t_release"]

JETPACK6_PYTHON = (3, 10)
"""The Python JetPack 6's TensorRT bindings (python3-libnvinfer) are built for."""
GPU_NODES = ("dev/nvmap", "dev/nvhost-ctrl-gpu")
"""Device nodes CUDA opens on a Jetson (groups ``video`` and ``render`` grant them)."""

_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


@dataclass(frozen=True)
class PlatformCheck:
    """One verdict: ``ok``, what was found, and how to fix it when not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class PlatformFacts:
    """What :func:`gather_facts` found (plain values, so :func:`assess` is testable anywhere)."""

    python: tuple[int, int]
    l4t_release: str | None = None
    """``36.4.0`` from ``/etc/nv_tegra_release``; None off a Jetson."""
    model: str = ""
    """``/proc/device-tree/model``, e.g. ``NVIDIA Jetson Orin Nano Developer Kit``."""
    in_venv: bool = False
    system_site_packages: bool = False
    tensorrt_version: str | None = None
    tensorrt_path: str = ""
    ort_providers: tuple[str, ...] = ()
    gpu_nodes: Mapping[str, bool] = field(default_factory=dict)
    """Device node -> whether this process may read and write it."""
    backends: Mapping[str, str | None] = field(default_factory=dict)
    """Backend kind (best first) -> why it is unavailable, None when available."""


def parse_l4t_release(text: str) -> str | None:
    """``36.4.0`` from the first line of ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, ...``)."""
    match = _L4T.search(text)
    return None if match is None else f"{match.group(1)}.{match.group(2)}"


def assess(facts: PlatformFacts) -> list[PlatformCheck]:
    """The checks for ``facts``: Python, Jetson-specific wiring (on a Jetson only), and which backend will run."""
    checks: list[PlatformCheck] = []
    version = ".".join(map(str, facts.python))
    checks.append(
        PlatformCheck("python", facts.python >= (3, 10), f"Python {version}", "BTT Edge needs Python 3.10 or later")
    )
    if facts.l4t_release is not None:
        checks.extend(_jetson_checks(facts, version))
    available = [kind for kind, reason in facts.backends.items() if reason is None]
    if facts.backends:
        passed_over = "; ".join(f"{kind}: {reason}" for kind, reason in facts.backends.items() if reason is not None)
        detail = f"auto tries {available[0]} first" if available else "no backend is available"
        checks.append(
            PlatformCheck(
                "backend",
                bool(available),
                detail + (f" (not available: {passed_over})" if passed_over else ""),
                "" if available else "install onnxruntime (a dependency of btt-edge) into the agent's environment",
            )
        )
    return checks


def _jetson_checks(facts: PlatformFacts, version: str) -> list[PlatformCheck]:
    checks = [PlatformCheck("jetson", True, f"{facts.model or 'Jetson'}, L4T R{facts.l4t_release}")]
    major = int(str(facts.l4t_release).split(".", 1)[0])
    if major >= 36:
        checks.append(
            PlatformCheck(
                "jetpack python",
                facts.python == JETPACK6_PYTHON,
                f"Python {version} (JetPack 6 ships TensorRT bindings for 3.10)",
                "build the package with --python /usr/bin/python3.10 (packaging/build-deb)",
            )
        )
    if facts.in_venv:
        checks.append(
            PlatformCheck(
                "system site packages",
                facts.system_site_packages,
                "the venv sees JetPack's packages" if facts.system_site_packages else "the venv is isolated",
                "recreate the venv with --system-site-packages (or set include-system-site-packages = true "
                "in its pyvenv.cfg) so JetPack's tensorrt is importable",
            )
        )
    if facts.tensorrt_version is None:
        checks.append(
            PlatformCheck("tensorrt", False, "tensorrt does not import", "sudo apt-get install python3-libnvinfer")
        )
    else:
        from_system = "dist-packages" in facts.tensorrt_path and "site-packages" not in facts.tensorrt_path
        checks.append(
            PlatformCheck(
                "tensorrt",
                from_system,
                f"TensorRT {facts.tensorrt_version} from {facts.tensorrt_path}",
                "" if from_system else "a PyPI tensorrt wheel does not support Tegra: pip uninstall it from the venv",
            )
        )
    denied = [node for node, allowed in facts.gpu_nodes.items() if not allowed]
    if facts.gpu_nodes:
        checks.append(
            PlatformCheck(
                "gpu devices",
                not denied,
                "GPU device nodes accessible" if not denied else "cannot open " + ", ".join(denied),
                "add the agent's user to the groups video and render (btt-edge.service does)",
            )
        )
    checks.append(
        PlatformCheck(
            "onnxruntime providers",
            True,
            ", ".join(facts.ort_providers) or "onnxruntime does not import",
        )
    )
    return checks


def gather_facts(root: Path = Path("/"), *, backends: bool = True) -> PlatformFacts:
    """Read this machine's facts (``root`` prefixes the files read; ``backends``: ask each backend factory)."""
    release_file = root / "etc/nv_tegra_release"
    l4t = parse_l4t_release(_read(release_file)) if release_file.exists() else None
    model = _read(root / "proc/device-tree/model").strip("\0\n ")
    in_venv = sys.prefix != sys.base_prefix
    cfg = _read(Path(sys.prefix) / "pyvenv.cfg")
    system_site = bool(re.search(r"^include-system-site-packages\s*=\s*true\s*$", cfg, re.M | re.I))
    trt_version, trt_path = _tensorrt()
    nodes = {str(root / n): os.access(root / n, os.R_OK | os.W_OK) for n in GPU_NODES if (root / n).exists()}
    return PlatformFacts(
        python=(sys.version_info.major, sys.version_info.minor),
        l4t_release=l4t,
        model=model,
        in_venv=in_venv,
        system_site_packages=system_site,
        tensorrt_version=trt_version,
        tensorrt_path=trt_path,
        ort_providers=_ort_providers(),
        gpu_nodes=nodes,
        backends=_backends() if backends else {},
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tensorrt() -> tuple[str | None, str]:
    try:
        import tensorrt
    except ImportError:
        return None, ""
    return str(getattr(tensorrt, "__version__", "?")), str(getattr(tensorrt, "__file__", ""))


def _ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


def _backends() -> dict[str, str | None]:
    from edge.pipeline.backends import default_factories

    return {factory.kind: factory.unavailable_reason() for factory in default_factories()}

"""What the box could offer: its accelerator, memory, load and a measured throughput score.

Three sources, best first: NVML (``pynvml``) on a discrete NVIDIA GPU; ``tegrastats`` on a Jetson (its GPU shares
system memory); the CPU otherwise (``/proc/meminfo``, ``/proc/cpuinfo``). :func:`parse_tegrastats` and
:func:`parse_meminfo` are pure; the probes around them read the system and never raise (a source that fails is
skipped, the CPU always answers).

The throughput score is measured, not declared: :func:`throughput_score` times a fixed float32 matrix
multiplication (the standard workload) and reports millions of floating-point operations per second.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "Accelerator",
    "cpu_load",
    "parse_meminfo",
    "parse_tegrastats",
    "probe_accelerator",
    "throughput_score",
]

STANDARD_SIZE = 256
"""Side of the square float32 matrices of the standard workload."""


@dataclass(frozen=True)
class Accelerator:
    """One accelerator as measured now."""

    kind: Literal["cuda", "jetson", "cpu"]
    name: str
    memory_mb: int
    free_memory_mb: int
    utilisation_pct: int
    """Busy share of the accelerator right now (for the CPU: the load average per core, in percent)."""
    power_w: int
    """Power drawn now, where the source reports it; 0 when unknown."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_meminfo(text: str) -> tuple[int, int]:
    """``(total_mb, available_mb)`` from the text of ``/proc/meminfo``; ValueError when the fields are missing."""
    fields = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE)}
    return fields["MemTotal"] // 1024, fields.get("MemAvailable", fields["MemTotal"]) // 1024


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_POWER = re.compile(r"\b(?:VDD_IN|POM_5V_IN) (\d+)mW")


def parse_tegrastats(line: str) -> Accelerator:
    """The Jetson GPU from one ``tegrastats`` line (``RAM used/totalMB ... GR3D_FREQ n% ... VDD_IN mW/mW``).

    ValueError when the line has no RAM or GR3D field (not a tegrastats line).
    """
    ram, gpu = _RAM.search(line), _GR3D.search(line)
    if ram is None or gpu is None:
        raise ValueError(f"not a tegrastats line: {line[:80]!r}")
    power = _POWER.search(line)
    used, total = int(ram.group(1)), int(ram.group(2))
    return Accelerator(
        kind="jetson",
        name="Jetson GPU (shared memory)",
        memory_mb=total,
        free_memory_mb=total - used,
        utilisation_pct=int(gpu.group(1)),
        power_w=int(power.group(1)) // 1000 if power else 0,
    )


def _nvml() -> Accelerator | None:
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver, no GPU
        return None
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilisation = pynvml.nvmlDeviceGetUtilizationRates(handle)
        try:
            power_mw = int(pynvml.nvmlDeviceGetPowerUsage(handle))
        except Exception:  # not supported on this board
            power_mw = 0
        return Accelerator(
            kind="cuda",
            name=name.decode() if isinstance(name, bytes) else str(name),
            memory_mb=int(memory.total) // 2**20,
            free_memory_mb=int(memory.free) // 2**20,
            utilisation_pct=int(utilisation.gpu),
            power_w=power_mw // 1000,
        )
    except Exception:  # pynvml.NVMLError on any query: treat as no GPU
        return None
    finally:
        pynvml.nvmlShutdown()


def _tegrastats(binary: str | None) -> Accelerator | None:
    if binary is None:
        return None
    try:
        with subprocess.Popen([binary, "--interval", "100"], stdout=subprocess.PIPE, text=True) as proc:
            try:
                line = proc.stdout.readline() if proc.stdout is not None else ""
            finally:
                proc.kill()
        return parse_tegrastats(line)
    except (OSError, ValueError):
        return None


def cpu_load() -> float:
    """The 1-minute load average per core."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def _cpu() -> Accelerator:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            total, available = parse_meminfo(f.read())
    except (OSError, KeyError):
        total = available = 0
    name = "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if model:
            name = model.group(1).strip()
    except OSError:
        pass
    return Accelerator("cpu", f"{name} x{os.cpu_count() or 1}", total, available, int(cpu_load() * 100), 0)


def probe_accelerator(*, tegrastats: str | None = shutil.which("tegrastats")) -> Accelerator:
    """The best accelerator present: an NVML GPU, else a Jetson's (via ``tegrastats``), else the CPU."""
    return _nvml() or _tegrastats(tegrastats) or _cpu()


def throughput_score(seconds: float = 0.5, *, clock: Callable[[], float] = time.perf_counter) -> int:
    """Million float32 operations per second of the standard workload, run for about ``seconds`` on one thread
    of numpy's BLAS (the same figure on every box for the same hardware)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((STANDARD_SIZE, STANDARD_SIZE), dtype=np.float32)
    b = rng.standard_normal((STANDARD_SIZE, STANDARD_SIZE), dtype=np.float32)
    np.matmul(a, b)  # warm up
    rounds, start = 0, clock()
    while True:
        np.matmul(a, b)
        rounds += 1
        elapsed = clock() - start
        if elapsed >= seconds:
            break
    return int(rounds * 2 * STANDARD_SIZE**3 / elapsed / 1e6)

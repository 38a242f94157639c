"""The parent side of a job worker: a separate, resource-limited, pausable and killable process.

The worker (:mod:`edge.capacity.jobrun`) starts in its own session (so a signal to its process group reaches
every thread and child), at ``nice`` 19, with an address-space limit (``RLIMIT_AS``, the memory cap) and a CPU-time
limit (``RLIMIT_CPU``; the kernel kills it beyond that). :meth:`JobProcess.pause` sends SIGSTOP to the group and
returns once the kernel reports the process stopped (``/proc/<pid>/stat`` state ``T``), so the time it took is a
measured figure, not a hope; :meth:`JobProcess.kill` sends SIGKILL and reaps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import JobFailed

__all__ = ["JobProcess", "process_state"]


def process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z``...), ``""`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _limits(memory_mb: int, cpu_s: float) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
        seconds = max(1, int(cpu_s))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))
        os.nice(19)

    return apply


class JobProcess:
    """One running job worker."""

    def __init__(
        self,
        bundle: Path,
        batch: Path,
        out: Path,
        *,
        memory_mb: int,
        cpu_s: float,
        threads: int = 1,
    ) -> None:
        self.out = out
        env = {**os.environ, "BTT_JOB_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        self._errors = out.with_suffix(".err")
        with open(self._errors, "wb") as errors:  # a file, not a pipe: a chatty worker can never block on it
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edge.capacity.jobrun", str(bundle), str(batch), str(out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=env,
                preexec_fn=_limits(memory_mb, cpu_s),  # noqa: PLW1509 - no threads touch the child's state here
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.paused_s = 0.0
        self._paused_at: float | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def running(self) -> bool:
        """True until the worker exits (a paused worker is still running)."""
        return self._proc.poll() is None

    def device_s(self) -> float:
        """Wall seconds the worker has run, not counting pauses."""
        paused = self.paused_s + (time.monotonic() - self._paused_at if self._paused_at is not None else 0.0)
        return time.monotonic() - self.started - paused

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def pause(self, timeout_s: float = 1.0) -> float:
        """SIGSTOP the worker's group; return the seconds until the kernel reported it stopped."""
        start = time.monotonic()
        if self._paused_at is None:
            self._paused_at = start
        self._signal(signal.SIGSTOP)
        while (
            self.running()
            and process_state(self.pid) not in ("T", "t", "Z", "")
            and (time.monotonic() - start < timeout_s)
        ):
            time.sleep(0.0002)
        return time.monotonic() - start

    def resume(self) -> None:
        """SIGCONT the worker's group."""
        if self._paused_at is not None:
            self.paused_s += time.monotonic() - self._paused_at
            self._paused_at = None
        self._signal(signal.SIGCONT)

    def kill(self) -> float:
        """SIGKILL the worker's group and reap it; return the seconds that took."""
        start = time.monotonic()
        self._signal(signal.SIGKILL)
        self._proc.wait()
        return time.monotonic() - start

    def result(self) -> dict[str, Any]:
        """Wait for the worker and return its output; :class:`JobFailed` when it failed or was killed."""
        code = self._proc.wait()
        if code != 0:
            try:
                error = self._errors.read_bytes()[-300:].decode(errors="replace").strip()
            except OSError:
                error = ""
            reason = f"signal {-code}" if code < 0 else f"exit status {code}"
            raise JobFailed(f"job worker ended with {reason}: {error}")
        try:
            doc = json.loads(self.out.read_bytes())
        except (OSError, ValueError) as exc:
            raise JobFailed(f"job worker wrote no readable output: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
            raise JobFailed("job worker output has no outputs")
        return doc

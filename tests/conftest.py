"""Fixtures every test module may use: free ports, DCMTK's tools, and the agent as a real process.

* :func:`free_port` (function and fixture): a TCP port nobody listens on.
* :func:`wait_until`: poll a condition until it holds, failing the test after a timeout (every test that waits
  for another thread or process waits with it).
* ``dcmtk``: paths of DCMTK's binaries (``dcmtk.storescu`` etc.) and the environment to run them in
  (``TCP_NODELAY=1``, see the README). Always these, never pynetdicom's scripts of the same name.
* ``start_agent``: a factory that runs ``btt-edge run --data-dir DIR --port N`` as a subprocess and returns
  once it accepts associations (C-ECHO answered); every process it started is killed at teardown.
* ``agent``: one such agent on a fresh data directory.
* ``store``: a started :class:`~edge.store.image_store.ImageStore` in ``tmp_path / "data"`` (no disk reserve,
  duplicates kept), stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
from pydicom import config as pydicom_config

from edge.store.image_store import ImageStore

__all__ = ["AgentProcess", "Dcmtk", "free_port", "wait_until"]

_T = TypeVar("_T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], _T],
    timeout: float = 30.0,
    what: str | Callable[[], str] = "condition",
    *,
    interval: float = 0.05,
) -> _T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and return that.

    After ``timeout`` seconds the test fails (``AssertionError``) with "timed out after <timeout> s waiting for
    <what>"; ``what`` may be a function, called only then (to add what a log says at that moment).
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            waited_for = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout:g} s waiting for {waited_for}")
        time.sleep(interval)
    return value


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    """A free TCP port (see :func:`free_port`)."""
    return free_port()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    """A started image store in ``tmp_path / "data"``."""
    image_store = ImageStore(tmp_path / "data", min_free_mb=0, duplicate_policy="keep")
    image_store.start()
    yield image_store
    image_store.stop()


@dataclass(frozen=True)
class Dcmtk:
    """DCMTK's command-line tools, by absolute path, and the environment to run them in."""

    bin_dir: Path = Path("/usr/bin")
    env: Mapping[str, str] = field(default_factory=lambda: {**os.environ, "TCP_NODELAY": "1"})

    @property
    def storescu(self) -> str:
        return str(self.bin_dir / "storescu")

    @property
    def storescp(self) -> str:
        return str(self.bin_dir / "storescp")

    @property
    def echoscu(self) -> str:
        return str(self.bin_dir / "echoscu")

    @property
    def dcmcjpeg(self) -> str:
        return str(self.bin_dir / "dcmcjpeg")

    @property
    def dcmdump(self) -> str:
        return str(self.bin_dir / "dcmdump")

    def run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``tool`` (e.g. ``"storescu"``) with ``args``; the result carries its exit code and output."""
        return subprocess.run(
            [str(self.bin_dir / tool), *args],
            check=False,
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def echo(self, port: int, called_ae: str = "BTT_EDGE", host: str = "127.0.0.1") -> bool:
        """Whether a C-ECHO to ``host:port`` succeeds."""
        return self.run("echoscu", "-to", "5", "-aec", called_ae, host, str(port), timeout=30).returncode == 0


@pytest.fixture(scope="session")
def dcmtk() -> Dcmtk:
    """DCMTK's tools; fails (not skips) when they are missing, since the suite requires them."""
    tools = Dcmtk()
    missing = [t for t in ("storescu", "storescp", "echoscu") if not (tools.bin_dir / t).exists()]
    if missing:
        pytest.fail(f"DCMTK is not installed (missing {', '.join(missing)}); scripts/check installs it")
    return tools


@dataclass
class AgentProcess:
    """A running ``btt-edge run``; its log (stderr and stdout) goes to ``log_path``."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    log_path: Path

    def log(self) -> str:
        """Everything the agent has logged so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM, wait for a clean exit, return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash or power cut, as far as the agent can tell)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class StartAgent(Protocol):
    def __call__(
        self, data_dir: Path, *, port: int | None = None, args: Sequence[str] = (), env: Mapping[str, str] = ...
    ) -> AgentProcess: ...


@pytest.fixture
def start_agent(dcmtk: Dcmtk, tmp_path: Path) -> Iterator[StartAgent]:
    """Factory: start ``btt-edge run`` on ``data_dir`` (and a free port unless given); wait until it echoes."""
    started: list[AgentProcess] = []

    def start(
        data_dir: Path, *, port: int | None = None, args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> AgentProcess:
        port = free_port() if port is None else port
        log_path = tmp_path / f"agent-{len(started)}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BTT_EDGE_")}
        environ.update(env or {})
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "edge", "run", "--data-dir", str(data_dir), "--port", str(port), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        agent = AgentProcess(process, data_dir, port, log_path)
        started.append(agent)
        deadline = time.monotonic() + 60
        while not dcmtk.echo(port):
            if process.poll() is not None or time.monotonic() > deadline:
                agent.kill()
                pytest.fail(f"btt-edge run did not start (exit {process.returncode}):\n{agent.log()}")
            time.sleep(0.2)
        return agent

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture
def agent(start_agent: StartAgent, tmp_path: Path) -> AgentProcess:
    """``btt-edge run`` on a fresh data directory and a free port, accepting associations."""
    return start_agent(tmp_path / "data")


@pytest.fixture(scope="session")
def big_multiframe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~157 MB multi-frame 16-bit Enhanced CT object (a CBCT volume's size), explicit VR little endian."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

    path = tmp_path_factory.mktemp("big") / "cbct.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "CBCT1", "Test^Volume", "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 640, 1024, 120
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    frame = (np.arange(640 * 1024, dtype=np.uint32) % 4096).astype(np.uint16).tobytes()
    ds.PixelData = frame * 120
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(autouse=True)
def _restore_pydicom_validation_mode() -> Iterator[None]:
    """The image store sets pydicom's process-wide reading validation mode; keep it from leaking between tests."""
    mode = pydicom_config.settings.reading_validation_mode
    yield
    pydicom_config.settings.reading_validation_mode = mode

"""A real Orthanc (``/usr/sbin/Orthanc``, Debian's ``orthanc``) playing the clinic's PACS in tests.

::

    with OrthancPacs(tmp_path / "pacs", calling_aes=("BTT_EDGE",)) as pacs:
        pacs.destination(("sr", "overlay"))    # a DestinationConfig for its DICOM port
        pacs.get("/studies")                   # its REST API, the answer's JSON

Each instance has its own JSON config, storage and index directories under ``directory``, and its own DICOM and
HTTP ports (free loopback ports). Orthanc has no setting for the address it listens on, so the config keeps it to
this machine by what it accepts instead: its REST API answers only local clients (``RemoteAccessAllowed`` false,
so it needs no users), and it stores only what the listed calling AE titles send from 127.0.0.1
(``DicomModalities`` with their host checked, ``DicomAlwaysAllowStore`` false); the called AE title is checked
too, as a clinic's PACS would. No plugins are loaded (with ``dicomweb=True``, only Debian's DICOMweb plugin,
serving STOW-RS, QIDO-RS and WADO-RS under :attr:`OrthancPacs.dicomweb_url`) and nothing is written outside
``directory``.
:meth:`OrthancPacs.start` returns once ``GET /system`` answers with this config's AE title and port;
:meth:`OrthancPacs.stop` (also on leaving the ``with``) ends it with SIGTERM, then SIGKILL if it hangs.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edge.config import DestinationConfig
from edge.results.kinds import ResultKind
from tests.conftest import free_port

__all__ = ["DICOMWEB_PLUGIN", "ORTHANC", "OrthancPacs"]

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Straight to 127.0.0.1, whatever proxy the environment names."""


class OrthancPacs:
    """One Orthanc process on free loopback ports, with its own config and storage under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        ae_title: str = "PACS",
        calling_aes: Iterable[str] = ("BTT_EDGE",),
        dicomweb: bool = False,
    ) -> None:
        self.directory = directory
        self.dicomweb = dicomweb
        self.ae_title = ae_title
        self.calling_aes = tuple(calling_aes)
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.log_file = directory / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "orthanc.json").write_text(json.dumps(self._config(), indent=2), encoding="utf-8")

    def _config(self) -> dict[str, Any]:
        return {
            "Name": "BTT test PACS",
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            **({"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}} if self.dicomweb else {}),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "MetricsEnabled": False,
            "HttpThreadsCount": 4,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {
                f"scu{i}": {"AET": ae, "Host": "127.0.0.1", "Port": 104, "AllowStore": True}
                for i, ae in enumerate(self.calling_aes)
            },
            "DicomThreadsCount": 2,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StableAge": 1,
        }

    # --- addresses --------------------------------------------------------------------------------------

    def destination(self, kinds: tuple[ResultKind, ...] = ("sr", "overlay")) -> DestinationConfig:
        """This PACS as a ``[[results.destinations]]`` entry that takes ``kinds``."""
        return DestinationConfig(ae_title=self.ae_title, host="127.0.0.1", port=self.dicom_port, kinds=kinds)

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb plugin's base URL (``dicomweb=True``): STOW-RS posts to ``<url>/studies``."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def fetch(self, path: str, accept: str, timeout: float = 10.0) -> tuple[str, bytes]:
        """``GET path`` with ``Accept: accept`` (QIDO-RS, WADO-RS); the answer's Content-Type and body."""
        url = f"http://127.0.0.1:{self.http_port}{quote(path, safe='/?=&')}"
        request = urllib.request.Request(url, headers={"Accept": accept})
        with _LOCAL.open(request, timeout=timeout) as response:
            return str(response.headers.get("Content-Type", "")), bytes(response.read())

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """``GET path`` (e.g. ``/studies``) on the REST API; the answer's JSON. An HTTP error raises."""
        url = f"http://127.0.0.1:{self.http_port}{quote(path, safe='/?=&')}"
        with _LOCAL.open(url, timeout=timeout) as response:
            return json.load(response)

    # --- lifecycle --------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start Orthanc and wait until its REST API answers ``GET /system`` with this config's AE and port."""
        if self.running:
            return
        if not ORTHANC.exists():
            raise RuntimeError(f"{ORTHANC} is missing: Debian's orthanc is required (scripts/setup installs it)")
        if self.dicomweb and not DICOMWEB_PLUGIN.exists():
            raise RuntimeError(f"{DICOMWEB_PLUGIN} is missing: Debian's orthanc-dicomweb is required (scripts/setup)")
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(ORTHANC), str(self.directory / "orthanc.json")],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_answering(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._proc is not None and time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (exit {self._proc.returncode}):\n{self.log()}")
            try:
                system = self.get("/system", timeout=1.0)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
                continue
            if (system.get("DicomAet"), system.get("DicomPort")) != (self.ae_title, self.dicom_port):
                raise RuntimeError(f"another server answers on port {self.http_port}: {system}")
            return
        raise RuntimeError(
            f"Orthanc's REST API did not answer on port {self.http_port} within {timeout}s\n{self.log()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait for Orthanc to exit; SIGKILL if it has not within ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self) -> str:
        """Orthanc's log so far (for assertion messages)."""
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> OrthancPacs:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

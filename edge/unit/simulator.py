"""A virtual X-ray unit that speaks the bridge's protocol over a pty, for tests, the demo and bench work.

:class:`PtyTransport` is the unit's end of a pseudo-terminal: the agent opens the slave path printed by
``btt-edge simulate-unit --pty`` as if it were the unit's serial port. Closing it (:meth:`PtyTransport.unplug`)
is what the agent sees when the unit's cable is pulled; it comes back on a new pty, and the optional symlink
(the simulator's stand-in for a udev ``/dev/serial/by-id`` name) then points at the new one.

:class:`UnitSimulator` behaves like the unit's controller: it identifies itself, reports status, heat and
faults, keeps an exposure log and replays it on request, and when scripted (:class:`SimulatorScript`) makes an
exposure every N seconds, raises faults, adds line noise and pulls its own cable. After each exposure it can
send the image to the agent's storage SCP with DICOM C-STORE (:class:`ImageSender`), as a real unit does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import queue
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from firmware_bridge.errors import BridgeError, PortUnavailable, TransportError
from firmware_bridge.link import Link, SerialLinkSettings
from firmware_bridge.messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Capability,
    ClockSync,
    ExposureCompleted,
    ExposureLogEnd,
    ExposureStarted,
    GetExposureLog,
    GetIdentity,
    GetStatus,
    Heartbeat,
    Identify,
    Message,
    Status,
)
from firmware_bridge.transport import MemoryTransport
from models.synthetic import generate
from models.synthetic_dicom import DX_FOR_PRESENTATION, set_pixels
from runtime.durable import atomic_write_bytes

__all__ = [
    "FAULT_CODES",
    "ImageSender",
    "PtyTransport",
    "SimulatorScript",
    "UnitSimulator",
    "image_dataset",
    "noise",
]

log = logging.getLogger("edge.unit.simulator")

FAULT_CODES: dict[int, str] = {
    0x0101: "tube overheat",
    0x0203: "generator voltage out of range",
    0x0301: "door interlock open",
}
"""The faults the simulator raises, in turn (a real unit's codes are its manufacturer's)."""

UNIT_CAPABILITIES = (
    Capability.EXPOSURE_LOG
    | Capability.CLOCK_SYNC
    | Capability.DOSE_AREA_PRODUCT
    | Capability.HEAT_UNITS
    | Capability.DICOM_SEND
)


class PtyTransport:
    """The unit's end of a pty: ``open`` makes a new pty and (re)points ``link`` at its slave path."""

    def __init__(self, link: Path | None = None, read_timeout_s: float = 0.05) -> None:
        self.link = link
        self.read_timeout_s = read_timeout_s
        self.path: str | None = None
        """The slave path the agent opens (the current pty)."""
        self.tamper: Callable[[bytes], bytes] | None = None
        """Applied to every write: line noise."""
        self.tamper_in: Callable[[bytes], bytes] | None = None
        """Applied to every read: what the unit fails to hear (dropped ACKs in tests)."""
        self.plugged = True
        self._master: int | None = None
        self._slave: int | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._master is not None

    @property
    def port(self) -> str:
        """The path to give the agent: the stable link if there is one, else the pty itself."""
        return str(self.link) if self.link is not None else str(self.path)

    def open(self) -> None:
        """Make a new pty in raw mode; keep its slave open too so the agent may come and go."""
        if self._master is not None:
            return
        if not self.plugged:
            raise PortUnavailable("simulated unit is unplugged")
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise PortUnavailable(f"cannot make a pty: {exc}") from exc
        tty.setraw(slave)
        self._master, self._slave, self.path = master, slave, os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.tmp")
            try:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(self.path)
                os.replace(tmp, self.link)
            except OSError as exc:
                self.close()
                raise PortUnavailable(f"cannot point {self.link} at {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close both ends: the agent's reads fail as if the cable were pulled."""
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None

    def unplug(self) -> None:
        """Pull the cable: close the pty; ``open`` fails until :meth:`plug`."""
        self.plugged = False
        self.close()

    def plug(self) -> None:
        """Plug the cable back in (the link reopens the port by itself)."""
        self.plugged = True

    def _fd(self) -> int:
        fd = self._master
        if fd is None:
            raise TransportError("simulated unit port is closed")
        return fd

    def read(self) -> bytes:
        fd = self._fd()
        try:
            ready, _, _ = select.select([fd], [], [], self.read_timeout_s)
            data = os.read(fd, 4096) if ready else b""
        except (OSError, ValueError) as exc:
            raise TransportError(f"reading the pty: {exc}") from exc
        return self.tamper_in(data) if self.tamper_in is not None and data else data

    def write(self, data: bytes) -> None:
        fd = self._fd()
        if self.tamper is not None:
            data = self.tamper(data)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            raise TransportError(f"writing the pty: {exc}") from exc


def noise(rate: float, rng: random.Random) -> Callable[[bytes], bytes]:
    """A tamper function: each byte is replaced by a random one with probability ``rate``, and now and then
    a burst of random bytes is inserted."""

    def tamper(data: bytes) -> bytes:
        out = bytearray(data)
        for i in range(len(out)):
            if rng.random() < rate:
                out[i] = rng.randrange(256)
        if rng.random() < rate * 10:
            out[rng.randrange(len(out) + 1) : 0] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        return bytes(out)

    return tamper


@dataclass(frozen=True)
class SimulatorScript:
    """What the simulated unit does by itself. Every interval 0 = never."""

    exposure_interval_s: float = 0.0
    exposure_time_s: float = 0.3
    """How long the beam is on (scaled down from the 10-20 s of a real panoramic)."""
    program: str = "panoramic"
    fault_interval_s: float = 0.0
    fault_duration_s: float = 3.0
    noise_rate: float = 0.0
    """Probability that a byte the unit sends is garbled."""
    unplug_interval_s: float = 0.0
    unplug_duration_s: float = 2.0
    heartbeat_s: float = 1.0
    clock_skew_s: float = 0.0
    """The unit's clock minus the true time."""
    seed: int | None = None


_LOG_SIZE = 10_000
"""Exposures the simulated unit keeps for ``GetExposureLog``."""


def _load_log(path: Path) -> list[ExposureCompleted]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [ExposureCompleted(**row) for row in rows]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        raise BridgeError(f"simulator state {path}: {exc}") from exc


def _save_log(path: Path, exposures: list[ExposureCompleted]) -> None:
    rows = [dataclasses.asdict(e) for e in exposures]
    atomic_write_bytes(path, json.dumps(rows).encode("utf-8"))


class UnitSimulator:
    """A virtual unit's controller on ``transport`` (a :class:`PtyTransport`, or a memory end in tests)."""

    def __init__(
        self,
        transport: PtyTransport | MemoryTransport,
        *,
        serial: str = "SIM-0001",
        model: str = "BTT Virtual Pano",
        manufacturer: str = "BTT",
        firmware: str = "sim-1.0",
        script: SimulatorScript | None = None,
        settings: SerialLinkSettings | None = None,
        max_version: int = PROTOCOL_VERSION,
        min_version: int = MIN_PROTOCOL_VERSION,
        image_sender: ImageSender | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.transport = transport
        self.state_path = state_path
        """Where the exposure log is kept across restarts (a real unit never reuses an exposure id)."""
        self.identity = Identify(model=model, serial=serial, firmware=firmware, manufacturer=manufacturer)
        self.script = script or SimulatorScript()
        self.image_sender = image_sender
        self.rng = random.Random(self.script.seed)
        if self.script.noise_rate > 0:
            transport.tamper = noise(self.script.noise_rate, self.rng)
        self.link = Link(
            transport,
            on_message=self._handle,
            capabilities=UNIT_CAPABILITIES,
            settings=settings,
            max_version=max_version,
            min_version=min_version,
            name="simulator",
        )
        self.exposures: list[ExposureCompleted] = [] if state_path is None else _load_log(state_path)
        self.state = "ready"
        self.faults: tuple[int, ...] = ()
        self.heat_pct = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the port and start the link and the script."""
        self._stop.clear()
        self.link.start()
        loops: list[tuple[str, Callable[[], None]]] = [("heartbeat", self._heartbeats)]
        if self.script.exposure_interval_s > 0:
            loops.append(("exposures", self._exposures))
        if self.script.fault_interval_s > 0:
            loops.append(("faults", self._faults))
        if self.script.unplug_interval_s > 0:
            loops.append(("unplug", self._unplugs))
        for name, target in loops:
            thread = threading.Thread(target=target, name=f"simulator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop everything and close the pty."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self.link.stop()
        if self.image_sender is not None:
            self.image_sender.stop()

    # --- what the unit does ---------------------------------------------------------------------------------

    def last_exposure_id(self) -> int:
        """The id of the newest exposure (0 before the first)."""
        return self.exposures[-1].exposure_id if self.exposures else 0

    def unit_time_ms(self) -> int:
        """The unit's clock (Unix ms), skewed as scripted."""
        return int((time.time() + self.script.clock_skew_s) * 1000)

    def status(self) -> Status:
        """The unit's status message now."""
        with self._lock:
            return Status(
                state=self.state,
                heat_pct=self.heat_pct,
                tube_temp_c=round(25.0 + self.heat_pct * 0.6, 1),
                faults=self.faults,
                unit_time_ms=self.unit_time_ms(),
            )

    def expose(self, program: str | None = None, *, duration_s: float | None = None) -> ExposureCompleted | None:
        """The operator presses the exposure button: report start and completion, log it, send its image.

        Returns ``None`` when the unit is faulted (a real unit does not expose then; the bridge never decides).
        """
        with self._lock:
            if self.state == "fault":
                return None
            self.state = "busy"
            exposure_id = self.last_exposure_id() + 1
        program = program or self.script.program
        kvp, ma = (70.0, 10.0) if program != "intraoral" else (60.0, 7.0)
        started = self.unit_time_ms()
        self._send(self.status())
        self._send(ExposureStarted(exposure_id, program, kvp, ma, started))
        duration = self.script.exposure_time_s if duration_s is None else duration_s
        self._stop.wait(duration)
        time_ms = max(1, round(duration * 1000))
        exposure = ExposureCompleted(
            exposure_id=exposure_id,
            program=program,
            kvp=kvp,
            ma=ma,
            time_ms=time_ms,
            dap_mgy_cm2=round(kvp * ma * time_ms / 1000 * 0.015, 3),
            started_ms=started,
        )
        with self._lock:
            self.exposures.append(exposure)
            del self.exposures[:-_LOG_SIZE]
            self.state = "ready"
            self.heat_pct = min(100, self.heat_pct + 5)
            if self.state_path is not None:
                _save_log(self.state_path, self.exposures)
        self._send(exposure)
        self._send(self.status())
        if self.image_sender is not None:
            self.image_sender.submit(self.identity, exposure)
        log.info("exposure %d (%s) done", exposure_id, program)
        return exposure

    def raise_fault(self, code: int) -> None:
        """Enter the fault state with ``code``."""
        with self._lock:
            self.state, self.faults = "fault", (*self.faults, code)
        self._send(self.status())

    def clear_faults(self) -> None:
        """Leave the fault state."""
        with self._lock:
            self.state, self.faults = "ready", ()
        self._send(self.status())

    def _send(self, message: Message) -> None:
        with contextlib.suppress(BridgeError):
            self.link.send(message)

    def _handle(self, message: Message) -> None:
        if isinstance(message, GetIdentity):
            self._send(self.identity)
        elif isinstance(message, GetStatus):
            self._send(self.status())
        elif isinstance(message, ClockSync):
            self._send(ClockSync(message.host_time_ms, self.unit_time_ms()))
        elif isinstance(message, GetExposureLog):
            with self._lock:
                replay = [e for e in self.exposures if e.exposure_id > message.since_id]
                last = self.last_exposure_id()
            for exposure in replay:
                self._send(exposure)
            self._send(ExposureLogEnd(last_id=last, count=len(replay)))

    # --- the script -----------------------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.script.heartbeat_s):
            with self._lock:
                self.heat_pct = max(0, self.heat_pct - 1)
            if self.link.state == "connected":
                self._send(Heartbeat(self.unit_time_ms(), int(time.monotonic() - self._started)))

    def _exposures(self) -> None:
        while not self._stop.wait(self.script.exposure_interval_s):
            self.expose()

    def _faults(self) -> None:
        codes = list(FAULT_CODES)
        n = 0
        while not self._stop.wait(self.script.fault_interval_s):
            self.raise_fault(codes[n % len(codes)])
            n += 1
            if self._stop.wait(self.script.fault_duration_s):
                return
            self.clear_faults()

    def _unplugs(self) -> None:
        while not self._stop.wait(self.script.unplug_interval_s):
            log.info("unplugging the simulated unit for %g s", self.script.unplug_duration_s)
            self.transport.unplug()
            if self._stop.wait(self.script.unplug_duration_s):
                return
            self.transport.plug()


class ImageSender:
    """Sends the image of each exposure to the agent's SCP with C-STORE, in a background thread, retrying."""

    def __init__(self, ae_title: str, host: str, port: int, *, calling_ae: str = "SIM_UNIT", attempts: int = 5) -> None:
        self.ae_title, self.host, self.port = ae_title, host, port
        self.calling_ae = calling_ae
        self.attempts = attempts
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[tuple[Identify, ExposureCompleted] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulator-cstore", daemon=True)
        self._thread.start()

    @classmethod
    def parse(cls, spec: str) -> ImageSender:
        """``AE@HOST:PORT``."""
        ae, at, rest = spec.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (ae and at and host and colon and port.isdigit()):
            raise BridgeError(f"--send-to {spec!r}: expected AE@HOST:PORT")
        return cls(ae, host, int(port))

    def submit(self, identity: Identify, exposure: ExposureCompleted) -> None:
        """Queue the image of ``exposure``."""
        self._queue.put((identity, exposure))

    def stop(self) -> None:
        """Stop after the image being sent; images still queued are dropped (the simulated unit is switched off)."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None and not self._stopping.is_set():
            identity, exposure = item
            try:
                dataset = image_dataset(identity, exposure)
            except Exception:  # the simulator's own bug: report it, keep serving the next exposures
                log.exception("cannot make the image of exposure %d", exposure.exposure_id)
                self.failed += 1
                continue
            for attempt in range(self.attempts):
                try:
                    status = self._store(dataset)
                except (OSError, RuntimeError, ValueError) as exc:
                    status = f"{type(exc).__name__}: {exc}"
                if status == 0:
                    self.sent += 1
                    break
                log.warning(
                    "C-STORE to %s@%s:%d failed (%s), attempt %d",
                    self.ae_title,
                    self.host,
                    self.port,
                    status,
                    attempt + 1,
                )
                if self._stopping.wait(min(2**attempt, 10)):
                    return
            else:
                self.failed += 1

    def _store(self, dataset: Dataset) -> int | str:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(DX_FOR_PRESENTATION, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            return "association rejected or no answer"
        try:
            response = assoc.send_c_store(dataset)
        finally:
            assoc.release()
        return int(response.Status) if "Status" in response else "no response"


EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


def image_dataset(identity: Identify, exposure: ExposureCompleted) -> Dataset:
    """The DICOM image a unit would send for ``exposure``: DX for presentation, modality PX, with the pixels of a
    synthetic panoramic (:func:`models.synthetic.generate`, seeded by the exposure id)."""
    when = dt.datetime.fromtimestamp(exposure.started_ms / 1000, tz=dt.timezone.utc)
    synthetic = generate(exposure.exposure_id)
    pixels = synthetic.pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "SIMULATED^PATIENT"
    ds.PatientID = f"SIM{exposure.exposure_id:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = ds.AcquisitionTime = when.strftime("%H%M%S.%f")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f") + "+0000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(exposure.exposure_id)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "PX"
    ds.Manufacturer = identity.manufacturer
    ds.ManufacturerModelName = identity.model
    ds.DeviceSerialNumber = identity.serial
    ds.SoftwareVersions = identity.firmware
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.KVP = exposure.kvp
    ds.ExposureTime = exposure.time_ms
    ds.XRayTubeCurrent = round(exposure.ma)
    ds.ImageAndFluoroscopyAreaDoseProduct = round(exposure.dap_mgy_cm2 / 100, 6)
    ds.ImagerPixelSpacing = [round(synthetic.spacing_mm, 6)] * 2
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "B"
    ds.AnatomicRegionSequence = []
    ds.AcquisitionContextSequence = []
    ds.DetectorType = ""
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    low, high = np.percentile(pixels, [0.5, 99.5])
    ds.WindowCenter = round(float(low + high) / 2)
    ds.WindowWidth = max(1, round(float(high - low)))
    set_pixels(ds, pixels)
    return ds

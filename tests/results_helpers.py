"""Source images and findings for the results tests: panoramic (DX, PX), intra-oral (IO) and CBCT-derived (CT)."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dental.findings import Finding
from edge.db import transaction
from edge.results.analysis import Algorithm, Analysis
from edge.store.image_store import ImageStore
from edge.store.index import set_state
from edge.unit.simulator import image_dataset
from firmware_bridge.messages import ExposureCompleted, Identify
from models.bundle import Code
from models.synthetic import generate
from models.synthetic_dicom import synthetic_dicom_bytes

DCIODVFY = "/usr/bin/dciodvfy"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"

CODES = {
    "caries": Code("SCT", "80967001", "Dental caries"),
    "periapical_lesion": Code("SCT", "196429007", "Periapical abscess"),
    "bone_loss": Code("SCT", "445321007", "Alveolar bone loss"),
}
ALGORITHM = Algorithm(bundle_id="btt-reference-dental-pano", version="0.1.0", name="BTT reference dental model",
                      codes=CODES)  # fmt: skip

_SOP_CLASSES = {
    "PX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "IO": "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray Image Storage - For Presentation
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage (a slice of a CBCT volume)
}


def source_image(
    modality: str = "PX", *, rows: int = 600, columns: int = 1200, seed: int = 1, pixels: np.ndarray | None = None
) -> Dataset:
    """A plausible radiograph of ``modality`` (PX panoramic, IO intra-oral, CT a CBCT slice); random pixels
    unless ``pixels`` (unsigned, 12 bits) are given."""
    if pixels is not None:
        rows, columns = pixels.shape
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = _SOP_CLASSES[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID-0042 "
    ds.IssuerOfPatientID = "CLINIC"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20261124"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC123"
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = "Dr^Who"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "ACME Dental"
    ds.PatientOrientation = ["R", "F"] if modality != "CT" else ""
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    if modality == "CT":
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1000, 1, "HU"
        ds.KVP = 90
        ds.AcquisitionNumber = 1
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.2, 0.2]
        ds.SliceThickness = 0.2
        pixels = rng.integers(-1000, 2000, size=(rows, columns), dtype=np.int16)
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.ImagerPixelSpacing = [0.1, 0.1]
        ds.DetectorType = "DIRECT"
        ds.BurnedInAnnotation = "NO"
        ds.Laterality = ""
        ds.PositionerType = ""
        ds.BodyPartExamined = "JAW"
        ds.KVP = 70
        ds.AnatomicRegionSequence = []
        ds.LossyImageCompression = "00"
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        if pixels is None:
            pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    if modality == "IO":
        ds.ImageLaterality = "R"
        ds.PositionerType = ""
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16 if modality != "CT" else np.int16).tobytes()
    return ds


def findings(columns: int = 1200, rows: int = 600) -> tuple[Finding, ...]:
    """Three findings spread over an image of this size (one without a tooth, one with bone loss)."""
    cx, cy = columns // 3, rows // 2
    return (
        Finding(kind="caries", tooth_fdi="36", confidence=0.91, bbox=(cx, cy, cx + 40, cy + 30),
                polygon=((cx, cy), (cx + 40, cy), (cx + 40, cy + 30), (cx, cy + 30)), area_px=1200, area_mm2=12.0),
        Finding(kind="bone_loss", tooth_fdi="11", confidence=0.66, bbox=(cx * 2, 20, cx * 2 + 30, 80),
                area_px=1800, area_mm2=18.0, bone_loss_mm=3.2, bone_loss_pct=24.5),
        Finding(kind="periapical_lesion", tooth_fdi=None, confidence=0.55, bbox=(10, 10, 30, 40), area_px=600),
    )  # fmt: skip


def analysis_of(source: Dataset) -> Analysis:
    return Analysis(sop_instance_uid=source.SOPInstanceUID, algorithm=ALGORITHM,
                    findings=findings(int(source.Columns), int(source.Rows)))  # fmt: skip


def file_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``path``, and its warnings about Laterality or the body part (a
    panoramic's ``B`` in series Laterality, an empty one, issue 16). dicom3tools must be installed."""
    assert shutil.which(DCIODVFY), "dicom3tools (dciodvfy) is required"
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    return [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.startswith("Error") or (line.startswith("Warning") and ("Laterality" in line or "Body Part" in line))
    ]


@functools.cache
def _synthetic_bytes(seed: int) -> bytes:
    return synthetic_dicom_bytes(generate(seed), seed)


@functools.cache
def _simulator_bytes(exposure_id: int) -> bytes:
    identity = Identify(model="PANO-9", serial="SN-0042", firmware="2.1.0", manufacturer="ACME Dental")
    exposure = ExposureCompleted(exposure_id=exposure_id, program="panoramic", kvp=70.0, ma=10.0, time_ms=14000,
                                 dap_mgy_cm2=95.0, started_ms=1_764_000_000_000)  # fmt: skip
    return file_bytes(image_dataset(identity, exposure))


def synthetic_panoramic(seed: int = 3) -> Dataset:
    """The product's own synthetic panoramic (``btt-edge model synth``), as the store holds it."""
    return dcmread(io.BytesIO(_synthetic_bytes(seed)))


def simulated_panoramic(exposure_id: int = 5) -> Dataset:
    """The image the unit simulator sends for a panoramic exposure, as the store holds it."""
    return dcmread(io.BytesIO(_simulator_bytes(exposure_id)))


def with_pixels(ds: Dataset, pixels: np.ndarray) -> Dataset:
    """``ds`` (a 16-bit grey image) with ``pixels`` instead of its own: a real header on a small image."""
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


def _lateral(image_laterality: str | None, *, series: str | None = None) -> Callable[[], Dataset]:
    def make() -> Dataset:
        ds = synthetic_panoramic()
        if image_laterality is None:
            del ds.ImageLaterality
        else:
            ds.ImageLaterality = image_laterality
        if series is not None:
            ds.Laterality = series
        return ds

    return make


DCIODVFY_SOURCES: dict[str, Callable[[], Dataset]] = {
    "panoramic": lambda: source_image("PX", rows=700, columns=1400),
    "intra-oral": lambda: source_image("IO", rows=500, columns=400),
    "cbct-derived": lambda: source_image("CT", rows=256, columns=256),
    "synthetic": synthetic_panoramic,
    "simulator": simulated_panoramic,
    "image-laterality-B": _lateral("B"),
    "image-laterality-U": _lateral("U"),
    "image-laterality-L": _lateral("L"),
    "image-laterality-R": _lateral("R"),
    "image-laterality-none": _lateral(None),
    "series-laterality-R-image-B": _lateral("B", series="R"),
    "series-laterality-empty": _lateral(None, series=""),
    "pydicom-CT_small": lambda: dcmread(str(get_testdata_file("CT_small.dcm"))),  # third party, Laterality empty
}
"""Every source the dciodvfy tests build each result object from: hand-built ones of three modalities, the
product's generator and unit simulator, each Image Laterality a panoramic may carry, and a third-party file."""


class FakeAnalyses:
    """An :class:`~edge.results.service.AnalysisSource` over a dict."""

    def __init__(self) -> None:
        self.analyses: dict[str, Analysis] = {}

    def load(self, conn: object, sop_instance_uid: str) -> Analysis | None:
        return self.analyses.get(sop_instance_uid)


def ingest(store: ImageStore, ds: Dataset, *, analysed: bool = True) -> str:
    """Store ``ds`` as the SCP would and (by default) move it to ``analysed``; returns its SOP Instance UID."""
    spooled = store.incoming_dir / f"{ds.SOPInstanceUID}.part"
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(file_bytes(ds))
    store.accept(spooled, "UNIT1")
    if analysed:
        with transaction(store.conn):
            set_state(store.conn, ds.SOPInstanceUID, "processing", expected="received")
        with transaction(store.conn):
            set_state(store.conn, ds.SOPInstanceUID, "analysed", expected="processing")
    return str(ds.SOPInstanceUID)


@contextlib.contextmanager
def storescp(
    out_dir: Path, port: int, ae_title: str = "PACS", *, unique: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """DCMTK's ``storescp`` playing the clinic's PACS on ``port``, writing what it receives to ``out_dir`` (with
    ``unique``, a copy received twice becomes two files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    process = subprocess.Popen(
        [STORESCP, "-aet", ae_title, "-od", str(out_dir), *(["+uf"] if unique else []), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([ECHOSCU, "-aec", ae_title, "127.0.0.1", str(port)], env=env, capture_output=True,
                             check=False).returncode != 0:  # fmt: skip
            assert process.poll() is None, "storescp exited"
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def received(out_dir: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, for everything ``storescp`` wrote to ``out_dir``."""
    return {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out_dir.iterdir() if p.is_file()}

"""A synthetic radiograph as a DICOM Digital X-Ray image (Modality PX), ready to send to the agent."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from models.synthetic import SyntheticImage

__all__ = ["DX_FOR_PRESENTATION", "instance_uid", "set_pixels", "synthetic_dataset", "synthetic_dicom_bytes"]

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
"""Digital X-Ray Image Storage - For Presentation."""


def set_pixels(ds: Dataset, pixels: npt.NDArray[np.uint16]) -> None:
    """Give ``ds`` the Image Pixel module of ``pixels``: one sample, MONOCHROME2, 16 bits unsigned, little endian."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()


def instance_uid(seed: int) -> str:
    """The SOP Instance UID of the synthetic image of ``seed``."""
    return str(generate_uid(entropy_srcs=["btt-synthetic-instance", str(seed)]))


def synthetic_dataset(image: SyntheticImage, seed: int) -> Dataset:
    """The DICOM dataset of ``image``; UIDs derive from ``seed``, so the same seed gives the same instance."""
    pixels = image.pixels
    lo, hi = int(pixels.min()), int(pixels.max())
    ds = Dataset()
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = instance_uid(seed)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["btt-synthetic-study", str(seed)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["btt-synthetic-series", str(seed)])
    ds.PatientName = f"SYNTHETIC^PANO{seed}"
    ds.PatientID = f"SYN{seed:08d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(seed)
    ds.StudyDescription = "Synthetic panoramic radiograph (not patient data)"
    ds.Modality = "PX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "BTT Edge synthetic generator"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = ["R", "F"]
    ds.ImageLaterality = "B"
    ds.AnatomicRegionSequence = []
    ds.AcquisitionContextSequence = []
    set_pixels(ds, pixels)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = (lo + hi + 1) // 2
    ds.WindowWidth = max(1, hi - lo + 1)
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = [round(image.spacing_mm, 6), round(image.spacing_mm, 6)]
    ds.DetectorType = "SCINTILLATOR"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def synthetic_dicom_bytes(image: SyntheticImage, seed: int) -> bytes:
    """``image`` as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    synthetic_dataset(image, seed).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

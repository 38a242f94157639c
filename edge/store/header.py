"""What the index keeps about one instance, read from its dataset (a pure core: a dataset in, a value out).

:func:`read_header` checks what the store needs before it accepts an instance: the SOP Instance, Study and
Series UIDs, and for an image a pixel header that a decoder can use (rows, columns, bits, representation,
samples, planar configuration, photometric interpretation: what pydicom's decoders require) and pixel data that
arrived whole for the frames it declares: for native (uncompressed) data as many bytes as pydicom's
``get_expected_length`` counts (which knows YBR_FULL_422's subsampled chroma), for encapsulated data at least one
fragment per frame. Anything else raises :class:`~edge.errors.InvalidDataset` with a reason a technician can act
on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.pixels.common import PhotometricInterpretation
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from edge.errors import InvalidDataset
from edge.store.encoding import PixelExtent

__all__ = ["InstanceHeader", "read_header"]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ALLOWED_BITS = (1, 8, 16, 32, 64)
_PHOTOMETRIC = frozenset(str(p.value) for p in PhotometricInterpretation)


@dataclass(frozen=True)
class InstanceHeader:
    """The identifiers and descriptive fields of one instance that a technician searches by."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidDataset(f"{keyword} is not an integer: {value!r}") from None


def _uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise InvalidDataset(f"{keyword} is missing")
    if len(value) > 64 or not _UID_RE.match(value):
        raise InvalidDataset(f"{keyword} is not a valid UID: {value[:80]!r}")
    return value


def _or_missing(value: int | None) -> str:
    return "missing" if value is None else str(value)


def _check_pixels(ds: Dataset, transfer_syntax: UID, pixels: PixelExtent) -> None:
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    bits_allocated, bits_stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    samples, frames = _int(ds, "SamplesPerPixel"), _int(ds, "NumberOfFrames") or 1
    if rows is None or columns is None or bits_allocated is None:
        missing = [n for n in ("Rows", "Columns", "BitsAllocated") if ds.get(n) in (None, "")]
        raise InvalidDataset(f"broken pixel header: {', '.join(missing)} missing")
    if rows <= 0 or columns <= 0 or frames <= 0:
        raise InvalidDataset(f"broken pixel header: {rows} rows x {columns} columns x {frames} frames")
    if bits_allocated not in _ALLOWED_BITS:
        raise InvalidDataset(f"broken pixel header: BitsAllocated {bits_allocated}")
    integers = pixels.keyword == "PixelData"  # Float and Double Float Pixel Data have no Bits Stored
    if integers and bits_stored is None:
        raise InvalidDataset("broken pixel header: BitsStored missing")
    if bits_stored is not None and not 1 <= bits_stored <= bits_allocated:
        raise InvalidDataset(f"broken pixel header: BitsStored {bits_stored} with BitsAllocated {bits_allocated}")
    representation = _int(ds, "PixelRepresentation")
    if integers and representation not in (0, 1):
        raise InvalidDataset(f"broken pixel header: PixelRepresentation {_or_missing(representation)}")
    samples = 1 if samples is None else samples
    if samples not in (1, 3):  # 4 (ARGB, CMYK) is retired and no decoder reads it
        raise InvalidDataset(f"broken pixel header: SamplesPerPixel {samples}")
    planar = _int(ds, "PlanarConfiguration")
    if samples == 3 and planar not in (0, 1):
        raise InvalidDataset(f"broken pixel header: PlanarConfiguration {_or_missing(planar)} with 3 samples")
    photometric = _text(ds, "PhotometricInterpretation")
    if not photometric:
        raise InvalidDataset("broken pixel header: PhotometricInterpretation is missing")
    if photometric not in _PHOTOMETRIC:
        raise InvalidDataset(f"broken pixel header: PhotometricInterpretation {photometric[:20]!r}")
    if transfer_syntax.is_encapsulated:
        _check_fragments(transfer_syntax, pixels, frames)
        return
    if pixels.encapsulated:
        raise InvalidDataset(f"broken pixel data: encapsulated pixel data in {transfer_syntax.name}")
    image = Dataset()  # the checked values, for pydicom's own count (it knows YBR_FULL_422's subsampling)
    image.Rows, image.Columns, image.NumberOfFrames = rows, columns, frames
    image.SamplesPerPixel, image.BitsAllocated, image.PhotometricInterpretation = samples, bits_allocated, photometric
    expected = get_expected_length(image, unit="bytes")
    if pixels.length < expected:
        raise InvalidDataset(
            f"broken pixel data: {pixels.length} bytes for {frames} frame(s) of {rows}x{columns}x{samples} "
            f"{photometric} at {bits_allocated} bits (needs {expected})"
        )


def _check_fragments(transfer_syntax: UID, pixels: PixelExtent, frames: int) -> None:
    if not pixels.encapsulated:
        raise InvalidDataset(f"broken pixel data: {transfer_syntax.name} needs encapsulated pixel data")
    if pixels.fragments < frames:
        raise InvalidDataset(f"broken pixel data: {pixels.fragments} fragment(s) for {frames} frame(s)")
    table = pixels.offset_table_bytes
    if table and table != 4 * frames:
        raise InvalidDataset(f"broken pixel data: a Basic Offset Table of {table} bytes for {frames} frame(s)")


def read_header(ds: Dataset, transfer_syntax_uid: str, pixels: PixelExtent | None = None) -> InstanceHeader:
    """Check ``ds`` and return its :class:`InstanceHeader`.

    ``pixels`` is what arrived of its pixel data (:func:`~edge.store.encoding.pixel_extent` of the file), or
    ``None`` when the dataset has none. A dataset that carries image attributes (Rows) but no pixel data is
    accepted, since some storage classes describe images stored elsewhere; one with pixel data must have a
    sound pixel header, and as many bytes (native) or fragments (encapsulated) as that header needs.
    """
    transfer_syntax = UID(transfer_syntax_uid)
    if not transfer_syntax.is_transfer_syntax:
        raise InvalidDataset(f"unknown transfer syntax {transfer_syntax_uid!r}")
    try:
        if pixels is not None:
            _check_pixels(ds, transfer_syntax, pixels)
        return InstanceHeader(
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            sop_class_uid=_uid(ds, "SOPClassUID"),
            study_uid=_uid(ds, "StudyInstanceUID"),
            series_uid=_uid(ds, "SeriesInstanceUID"),
            transfer_syntax_uid=str(transfer_syntax),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            accession_number=_text(ds, "AccessionNumber"),
            study_description=_text(ds, "StudyDescription"),
            modality=_text(ds, "Modality"),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            instance_number=_int(ds, "InstanceNumber"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int(ds, "NumberOfFrames"),
        )
    except InvalidDataset:
        raise
    except Exception as exc:  # a value pydicom cannot convert (bad VR, bad length): the dataset is unreadable
        raise InvalidDataset(f"unreadable element: {exc}") from exc

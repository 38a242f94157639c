"""The walk over a Part 10 file's element headers: whole files pass, and each way of not being whole is named."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from edge.errors import InvalidDataset
from edge.store.encoding import MAX_DEPTH, PixelExtent, pixel_extent, walk


def _bundled(name: str) -> bytes:
    return Path(str(get_testdata_file(name))).read_bytes()


def _part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, UID("1.2.3.4")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _nested(depth: int, *, undefined: bool = False) -> Dataset:
    """Content Sequences ``depth`` deep (``undefined``: of undefined length, ended by delimiters)."""
    ds = Dataset()
    ds.PatientName, ds.PatientID = "A^B", "X"
    inner = ds
    for _ in range(depth):
        item = Dataset()
        item.CodeValue = "1"
        inner.ContentSequence = [item]
        inner["ContentSequence"].is_undefined_length = undefined
        inner = item
    return ds


def test_whole_files_pass_and_say_what_arrived_of_their_pixels() -> None:
    assert pixel_extent(_bundled("CT_small.dcm")) == PixelExtent("PixelData", encapsulated=False, length=32768)
    rle = pixel_extent(_bundled("MR_small_RLE.dcm"))
    assert rle is not None
    assert (rle.encapsulated, rle.fragments, rle.offset_table_bytes) == (True, 1, 4)
    assert pixel_extent(_bundled("rtplan.dcm")) is None  # no pixel data, sequences three deep
    assert pixel_extent(_bundled("image_dfl.dcm")) is not None  # deflated: walked in the inflated dataset
    assert pixel_extent(_bundled("MR_small_bigendian.dcm")) == pixel_extent(_bundled("MR_small_implicit.dcm"))
    depths = {e.depth for e in walk(_part10(_nested(MAX_DEPTH)))}
    assert max(depths) == MAX_DEPTH


_PADDING = 12 + 126  # the bundled files end with 126 bytes of Data Set Trailing Padding


def _cut(data: bytes, n: int) -> bytes:
    return data[:-n]


def _delimiter_dropped(data: bytes) -> bytes:
    at = data.rindex(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    return data[:at] + data[at + 8 :]


def _vr_changed(data: bytes) -> bytes:
    at = data.index(b"\x10\x00\x20\x00LO")  # Patient ID
    return data[: at + 4] + b"XY" + data[at + 6 :]


def _tag_changed(data: bytes) -> bytes:
    at = data.index(b"\x10\x00\x20\x00LO")  # Patient ID becomes (0008,0020), after (0010,0010) Patient Name
    return data[:at] + b"\x08\x00\x20\x00" + data[at + 4 :]


def _sequence_grown(data: bytes) -> bytes:
    at = data.index(b"\x40\x00\x30\xa7SQ\0\0") + 8  # the Content Sequence's length field
    return data[:at] + struct.pack("<L", 0x7FFFFFF0) + data[at + 4 :]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_cut(_bundled("CT_small.dcm"), 300), "ends early: element .7FE0,0010. at offset .* needs 32768 bytes"),
        (_cut(_bundled("CT_small.dcm"), _PADDING + 32768 + 4), "ends early: an element header .* needs 12"),
        (_cut(_bundled("MR_small_RLE.dcm"), _PADDING + 8), "ends early: a sequence item or delimiter"),
        (_delimiter_dropped(_part10(_nested(2, undefined=True))), "ends early: a sequence item or delimiter"),
        (_cut(_bundled("image_dfl.dcm"), 40), "deflated dataset's stream is incomplete"),
        (_vr_changed(_part10(_nested(0))), "unknown VR b'XY'"),
        (_tag_changed(_part10(_nested(0))), "tags must ascend"),
        (_sequence_grown(_part10(_nested(2))), "ends early: element .0040,A730."),
        (_part10(_nested(MAX_DEPTH + 1)), f"nested deeper than {MAX_DEPTH}"),
        (_bundled("CT_small.dcm")[:128] + b"DICX", "not a DICOM Part 10 file"),
    ],
)
def test_what_is_not_whole_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidDataset, match=reason):
        pixel_extent(data)

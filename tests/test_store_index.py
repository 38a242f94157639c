"""The index: recording instances, listing, and compare-and-set pipeline state changes."""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from edge.db import DB_FILENAME, connect, transaction
from edge.errors import InvalidDataset, StateConflict, StoreError
from edge.store.encoding import PixelExtent
from edge.store.header import InstanceHeader, read_header
from edge.store.index import (
    get_instance,
    instance_path,
    instances_in_state,
    list_instances,
    list_studies,
    migrate_index,
    record_instance,
    set_state,
)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / DB_FILENAME)
    migrate_index(conn)
    yield conn
    conn.close()


def _header(sop: str = "1.2.3.4.1", study: str = "1.2.3", series: str = "1.2.3.4") -> InstanceHeader:
    return InstanceHeader(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        study_uid=study,
        series_uid=series,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id="P1",
        patient_name="Doe^Jane",
        modality="PX",
    )


def _record(conn: sqlite3.Connection, header: InstanceHeader, *, replace: bool = False) -> None:
    record_instance(
        conn,
        header,
        path=f"dicom/{header.sop_instance_uid}.dcm",
        size_bytes=100,
        calling_ae="UNIT1",
        received_at="2026-11-24T01:00:00.000Z",
        replace=replace,
    )


def test_record_and_get(conn: sqlite3.Connection, tmp_path: Path) -> None:
    _record(conn, _header())
    instance = get_instance(conn, "1.2.3.4.1")
    assert instance is not None
    assert instance.pipeline_state == "received"
    assert (instance.study_uid, instance.patient_name, instance.calling_ae) == ("1.2.3", "Doe^Jane", "UNIT1")
    assert instance_path(tmp_path, instance) == tmp_path / "dicom/1.2.3.4.1.dcm"
    assert get_instance(conn, "9.9") is None


def test_second_record_of_same_uid_is_refused_unless_replace(conn: sqlite3.Connection) -> None:
    _record(conn, _header())
    with pytest.raises(StoreError, match="indexed already"):
        _record(conn, _header())
    with transaction(conn):
        set_state(conn, "1.2.3.4.1", "processing", expected="received")
    _record(conn, _header(), replace=True)
    instance = get_instance(conn, "1.2.3.4.1")
    assert instance is not None
    assert instance.pipeline_state == "received"
    assert len(list_instances(conn)) == 1


def test_list_studies_counts_states(conn: sqlite3.Connection) -> None:
    _record(conn, _header("1.2.3.4.1"))
    _record(conn, _header("1.2.3.4.2"))
    _record(conn, _header("1.5.1", study="1.5", series="1.5.0"))
    with transaction(conn):
        set_state(conn, "1.2.3.4.2", "processing", expected="received")
    studies = {s.study_uid: s for s in list_studies(conn)}
    assert studies["1.2.3"].instance_count == 2
    assert studies["1.2.3"].states == {"received": 1, "processing": 1}
    assert [i.sop_instance_uid for i in list_instances(conn, "1.5")] == ["1.5.1"]
    assert [i.sop_instance_uid for i in instances_in_state(conn, "processing")] == ["1.2.3.4.2"]


def test_set_state_is_compare_and_set_inside_the_callers_transaction(conn: sqlite3.Connection) -> None:
    _record(conn, _header())
    with pytest.raises(StoreError, match="inside a transaction"):
        set_state(conn, "1.2.3.4.1", "processing", expected="received")
    with pytest.raises(ValueError, match="cannot move"):
        set_state(conn, "1.2.3.4.1", "forwarded", expected="received")
    conn.execute("CREATE TABLE receipts (sop TEXT)")

    def change_then_crash() -> None:
        with transaction(conn):
            set_state(conn, "1.2.3.4.1", "processing", expected="received")
            conn.execute("INSERT INTO receipts VALUES ('1.2.3.4.1')")
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        change_then_crash()
    instance = get_instance(conn, "1.2.3.4.1")
    assert instance is not None
    assert instance.pipeline_state == "received"
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0] == 0
    with transaction(conn):
        set_state(conn, "1.2.3.4.1", "processing", expected="received")
    with pytest.raises(StateConflict, match="in state 'processing'"), transaction(conn):
        set_state(conn, "1.2.3.4.1", "processing", expected=("received", "failed"))
    with pytest.raises(StateConflict, match="not indexed"), transaction(conn):
        set_state(conn, "7.7", "processing", expected="received")


def _dataset(**changes: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID, ds.SOPClassUID = "1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.1.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel = 4, 5, 16, 12, 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for key, value in changes.items():
        if value is None:
            ds.pop(key, None)
        else:
            with warnings.catch_warnings():  # pydicom warns about the invalid values these tests set on purpose
                warnings.simplefilter("ignore")
                setattr(ds, key, value)
    return ds


def _native(length: int) -> PixelExtent:
    return PixelExtent("PixelData", encapsulated=False, length=length)


def _fragments(fragments: int, table: int = 0) -> PixelExtent:
    return PixelExtent("PixelData", encapsulated=True, length=100, fragments=fragments, offset_table_bytes=table)


_YBR_422 = {"SamplesPerPixel": 3, "PhotometricInterpretation": "YBR_FULL_422", "PlanarConfiguration": 0}


def test_read_header_accepts_a_sound_dataset() -> None:
    header = read_header(_dataset(), ExplicitVRLittleEndian, _native(40))
    assert (header.sop_instance_uid, header.rows, header.columns) == ("1.2.3.4.1", 4, 5)
    assert read_header(_dataset(), JPEGBaseline8Bit, _fragments(1)).transfer_syntax_uid == JPEGBaseline8Bit
    assert read_header(_dataset(NumberOfFrames=2), JPEGBaseline8Bit, _fragments(3, table=8)).number_of_frames == 2
    ybr = _dataset(BitsAllocated=8, BitsStored=8, **_YBR_422)
    assert read_header(ybr, ExplicitVRLittleEndian, _native(40)).rows == 4  # 2 samples a pixel: chroma halved


@pytest.mark.parametrize(
    ("changes", "ts", "pixels", "reason"),
    [
        ({"SOPInstanceUID": None}, ExplicitVRLittleEndian, None, "SOPInstanceUID is missing"),
        ({"StudyInstanceUID": None}, ExplicitVRLittleEndian, None, "StudyInstanceUID is missing"),
        ({"SeriesInstanceUID": "1.2.x"}, ExplicitVRLittleEndian, None, "not a valid UID"),
        ({}, ExplicitVRLittleEndian, _native(39), "needs 40"),
        ({"BitsAllocated": 8, "BitsStored": 8, **_YBR_422}, ExplicitVRLittleEndian, _native(39), "needs 40"),
        (
            {"BitsAllocated": 8, "BitsStored": 8, **_YBR_422, "PlanarConfiguration": None},
            ExplicitVRLittleEndian,
            _native(40),
            "PlanarConfiguration missing",
        ),
        ({"Rows": 0}, ExplicitVRLittleEndian, _native(40), "0 rows"),
        ({"Columns": None}, ExplicitVRLittleEndian, _native(40), "Columns missing"),
        ({"BitsAllocated": 12}, ExplicitVRLittleEndian, _native(40), "BitsAllocated 12"),
        ({"BitsStored": 17}, ExplicitVRLittleEndian, _native(40), "BitsStored 17"),
        ({"BitsStored": None}, ExplicitVRLittleEndian, _native(40), "BitsStored missing"),
        ({"PixelRepresentation": 2}, ExplicitVRLittleEndian, _native(40), "PixelRepresentation 2"),
        ({"SamplesPerPixel": 4}, ExplicitVRLittleEndian, _native(160), "SamplesPerPixel 4"),
        ({"PhotometricInterpretation": None}, ExplicitVRLittleEndian, _native(40), "PhotometricInterpretation"),
        ({"PhotometricInterpretation": "MONOCHROMF2"}, ExplicitVRLittleEndian, _native(40), "'MONOCHROMF2'"),
        ({}, JPEGBaseline8Bit, _native(40), "needs encapsulated"),
        ({}, ExplicitVRLittleEndian, _fragments(1), "encapsulated pixel data in Explicit"),
        ({"NumberOfFrames": 3}, JPEGBaseline8Bit, _fragments(2), "2 fragment.s. for 3 frame"),
        ({"NumberOfFrames": 2}, JPEGBaseline8Bit, _fragments(2, table=4), "Basic Offset Table of 4 bytes"),
        ({}, "1.2.3.999", None, "unknown transfer syntax"),
    ],
)
def test_read_header_names_what_is_wrong(
    changes: dict[str, object], ts: str, pixels: PixelExtent | None, reason: str
) -> None:
    with pytest.raises(InvalidDataset, match=reason):
        read_header(_dataset(**changes), ts, pixels)

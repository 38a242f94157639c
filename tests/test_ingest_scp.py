"""The SCP in-process: statuses for input storescu cannot produce, and large objects spooled, not buffered."""

from __future__ import annotations

import subprocess
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from pynetdicom import AE, _config

from edge.cli import main
from edge.config import DicomConfig
from edge.errors import IngestError
from edge.ingest.scp import STATUS_CANNOT_UNDERSTAND, STATUS_DUPLICATE, StorageSCP
from edge.store.image_store import DuplicatePolicy, ImageStore
from edge.store.index import list_instances
from tests.conftest import Dcmtk, free_port, wait_until

CT = Path(str(get_testdata_file("CT_small.dcm")))


class Running:
    def __init__(self, tmp_path: Path, policy: DuplicatePolicy = "keep", max_associations: int = 8) -> None:
        self.store = ImageStore(tmp_path / "data", min_free_mb=0, duplicate_policy=policy)
        config = replace(DicomConfig(), bind_address="127.0.0.1", port=free_port(), max_associations=max_associations)
        self.scp = StorageSCP(config, self.store)
        self.store.start()
        self.scp.start()

    def stop(self) -> None:
        self.scp.stop()
        self.store.stop()


@pytest.fixture(autouse=True)
def _send_files_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path)
    yield running
    running.stop()


def _send(port: int, *paths: Path) -> list[int]:
    """C-STORE each Part 10 file as it is on disk (pynetdicom streams the bytes after the meta unparsed)."""
    ae = AE(ae_title="TESTSCU")
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="BTT_EDGE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()


def _garbage(tmp_path: Path) -> Path:
    """Valid file meta, then bytes that are no dataset at all."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6.7")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "garbage.dcm"
    with path.open("wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta)  # type: ignore[arg-type]
        fh.write(b"\x08\x00\x16\x00UI\xff\xff" + b"\x01" * 40)
    return path


def test_undecodable_dataset_gets_c210_and_the_next_one_is_stored(running: Running, tmp_path: Path) -> None:
    assert _send(running.scp.port, _garbage(tmp_path), CT) == [STATUS_CANNOT_UNDERSTAND, 0]
    assert len(list(running.store.quarantine_dir.glob("*1.2.3.4.5.6.7.dcm"))) == 1
    assert [i.sop_instance_uid for i in list_instances(running.store.conn)] == [str(dcmread(CT).SOPInstanceUID)]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "ends early: element (7FE0,0010) at offset 1502 needs 8192 bytes, only 8130 arrived"),
        ("rtplan_truncated.dcm", "ends early: element (300A,00B0) at offset 1452 needs 976 bytes, only 711"),
    ],
)
def test_a_file_that_ends_early_is_refused_and_quarantined(running: Running, name: str, reason: str) -> None:
    """pydicom's files cut short on purpose (storescu will not send them; a unit's bug could): what arrived is
    checked, not the length fields, so neither is acknowledged (before, MR_truncated was stored)."""
    assert _send(running.scp.port, Path(str(get_testdata_file(name)))) == [STATUS_CANNOT_UNDERSTAND]
    (why,) = running.store.quarantine_dir.glob("*.txt")
    assert reason in why.read_text()
    assert list_instances(running.store.conn) == []
    assert _send(running.scp.port, CT) == [0]


def test_a_private_storage_class_is_accepted_too(running: Running, tmp_path: Path) -> None:
    ds = dcmread(CT)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.826.0.1.3680043.8.498.777")  # unknown to anyone
    ds.save_as(tmp_path / "private.dcm")
    assert _send(running.scp.port, tmp_path / "private.dcm") == [0]
    (instance,) = list_instances(running.store.conn)
    assert instance.sop_class_uid == "1.2.826.0.1.3680043.8.498.777"


def test_studies_list_prints_one_line_per_study(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert _send(running.scp.port, CT) == [0]
    assert main(["studies", "list", "--data-dir", str(running.store.data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].endswith(str(dcmread(CT).StudyInstanceUID))
    assert "received:1" in lines[1]


def test_stopping_the_last_scp_restores_pynetdicoms_switches(tmp_path: Path) -> None:
    before = (_config.STORE_RECV_CHUNKED_DATASET, _config.UNRESTRICTED_STORAGE_SERVICE)
    first, second = Running(tmp_path / "a"), Running(tmp_path / "b")
    assert _config.STORE_RECV_CHUNKED_DATASET
    assert _config.UNRESTRICTED_STORAGE_SERVICE
    first.stop()
    assert _send(second.scp.port, CT) == [0]  # the other SCP still spools and accepts
    second.stop()
    assert before == (_config.STORE_RECV_CHUNKED_DATASET, _config.UNRESTRICTED_STORAGE_SERVICE)


def test_a_port_in_use_is_an_ingest_error_and_leaves_nothing_switched_on(running: Running, tmp_path: Path) -> None:
    before = (_config.STORE_RECV_CHUNKED_DATASET, _config.UNRESTRICTED_STORAGE_SERVICE)
    store = ImageStore(tmp_path / "other", min_free_mb=0, duplicate_policy="keep")
    clash = StorageSCP(replace(running.scp.config), store)
    with pytest.raises(IngestError, match=f"cannot listen on 127.0.0.1:{running.scp.port}"):
        clash.start()
    assert before == (_config.STORE_RECV_CHUNKED_DATASET, _config.UNRESTRICTED_STORAGE_SERVICE)
    assert _send(running.scp.port, CT) == [0]


def test_association_limit_rejects_the_extra_association(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    running = Running(tmp_path, max_associations=1)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate("127.0.0.1", running.scp.port, ae_title="BTT_EDGE")
    try:
        assert first.is_established
        second = ae.associate("127.0.0.1", running.scp.port, ae_title="BTT_EDGE")
        assert second.is_rejected
        rejected = [r for r in caplog.records if r.getMessage() == "association rejected" and hasattr(r, "btt_fields")]
        assert [r.btt_fields["reason"] for r in rejected] == ["dicom.max_associations (1) reached"]
    finally:
        first.release()
        running.stop()


def test_duplicate_with_different_content_gets_0111_under_reject(tmp_path: Path) -> None:
    running = Running(tmp_path, policy="reject")
    try:
        changed = dcmread(CT)
        changed.PatientName = "Other^Patient"
        changed.save_as(tmp_path / "changed.dcm")
        assert _send(running.scp.port, CT, CT, tmp_path / "changed.dcm") == [0, 0, STATUS_DUPLICATE]
        assert len(list_instances(running.store.conn)) == 1
    finally:
        running.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_large_object_is_spooled_to_disk_not_held_in_memory(
    running: Running, dcmtk: Dcmtk, big_multiframe: Path
) -> None:
    size = big_multiframe.stat().st_size
    tracemalloc.start()
    try:
        result = dcmtk.run("storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(running.scp.port), str(big_multiframe))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.returncode == 0, result.stderr
    assert peak < size / 10, f"peak Python allocations {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB object"
    (instance,) = list_instances(running.store.conn)
    assert instance.size_bytes > size - 1000
    assert instance.number_of_frames == 120


@pytest.mark.integration
@pytest.mark.slow
def test_a_transfer_cut_off_leaves_no_spool_file(
    running: Running, dcmtk: Dcmtk, big_multiframe: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sender = subprocess.Popen(
        [dcmtk.storescu, "-aec", "BTT_EDGE", "127.0.0.1", str(running.scp.port), str(big_multiframe)],
        env=dict(dcmtk.env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    incoming = running.store.incoming_dir
    wait_until(lambda: any(p.stat().st_size > 20_000_000 for p in incoming.iterdir()), 60, "the spool", interval=0.01)
    sender.kill()
    sender.wait(10)

    def discarded() -> bool:
        return not list(incoming.iterdir()) and any(
            r.getMessage() == "partial transfer discarded" for r in caplog.records
        )

    wait_until(discarded, 60, "the partial spool file discarded")
    assert list_instances(running.store.conn) == []

"""The image store: durable accept, duplicates, quarantine, disk guard, crash recovery and retention."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from edge.db import transaction
from edge.errors import DuplicateConflict, InvalidDataset, OutOfSpace, StoreError
from edge.store.image_store import DuplicatePolicy, ImageStore
from edge.store.index import get_instance, list_instances, set_state
from edge.store.retention import prune

CT = Path(str(get_testdata_file("CT_small.dcm")))
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def _store(data_dir: Path, policy: DuplicatePolicy = "keep", min_free_mb: int = 0) -> ImageStore:
    store = ImageStore(data_dir, min_free_mb=min_free_mb, duplicate_policy=policy)
    store.start()
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    store = _store(tmp_path / "data")
    yield store
    store.stop()


def _spool(store: ImageStore, source: Path = CT, name: str = "x.dcm") -> Path:
    target = store.incoming_dir / name
    shutil.copyfile(source, target)
    return target


def _modified_copy(tmp_path: Path, source: Path = CT) -> Path:
    ds = dcmread(source)
    ds.PatientName = "Changed^Name"
    out = tmp_path / "modified.dcm"
    ds.save_as(out)
    return out


def test_accept_moves_the_file_into_place_and_indexes_it(store: ImageStore) -> None:
    stored = store.accept(_spool(store), "UNIT1")
    assert stored.outcome == "stored"
    assert stored.path == store.data_dir / "dicom" / stored.header.study_uid / f"{CT_SOP}.dcm"
    assert stored.path.read_bytes() == CT.read_bytes()
    assert list(store.incoming_dir.iterdir()) == []
    instance = get_instance(store.conn, CT_SOP)
    assert instance is not None
    assert (instance.calling_ae, instance.size_bytes, instance.pipeline_state) == (
        "UNIT1",
        CT.stat().st_size,
        "received",
    )
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def test_identical_duplicate_is_acknowledged_without_a_second_row(store: ImageStore) -> None:
    store.accept(_spool(store), "UNIT1")
    again = store.accept(_spool(store), "UNIT1")
    assert again.outcome == "duplicate"
    assert len(list_instances(store.conn)) == 1
    assert list(store.incoming_dir.iterdir()) == []


def test_listeners_hear_new_instances_only_and_cannot_break_a_store(store: ImageStore) -> None:
    heard: list[str] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(lambda: heard.append("stored"))
    assert store.accept(_spool(store), "UNIT1").outcome == "stored"
    assert store.accept(_spool(store), "UNIT1").outcome == "duplicate"
    assert heard == ["stored"]


@pytest.mark.parametrize(
    ("policy", "outcome", "name"), [("keep", "kept_first", ""), ("replace", "replaced", "Changed")]
)
def test_different_content_follows_the_policy(
    tmp_path: Path, policy: DuplicatePolicy, outcome: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path / "data", policy)
    try:
        first = store.accept(_spool(store), "UNIT1")
        with transaction(store.conn):
            set_state(store.conn, CT_SOP, "processing", expected="received")
        second = store.accept(_spool(store, _modified_copy(tmp_path)), "UNIT2")
        assert second.outcome == outcome
        assert [r.btt_fields["policy"] for r in caplog.records if hasattr(r, "btt_fields")] == [policy]
        assert str(dcmread(first.path).PatientName).startswith(name or "CompressedSamples")
        instance = get_instance(store.conn, CT_SOP)
        assert instance is not None
        assert instance.pipeline_state == ("received" if policy == "replace" else "processing")
        assert len(list_instances(store.conn)) == 1
    finally:
        store.stop()


def test_reject_policy_raises_duplicate_conflict(tmp_path: Path) -> None:
    store = _store(tmp_path / "data", "reject")
    try:
        store.accept(_spool(store), "UNIT1")
        with pytest.raises(DuplicateConflict):
            store.accept(_spool(store, _modified_copy(tmp_path)), "UNIT1")
        assert list(store.incoming_dir.iterdir()) == []
    finally:
        store.stop()


def test_undecodable_input_is_invalid_and_can_be_quarantined(store: ImageStore) -> None:
    spooled = store.incoming_dir / "junk.dcm"
    spooled.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    with pytest.raises(InvalidDataset, match="no Transfer Syntax UID"):
        store.accept(spooled, "UNIT1")
    where = store.quarantine(spooled, "cannot be decoded", calling_ae="UNIT1", sop_instance_uid="1.2/../3")
    assert where.parent == store.quarantine_dir
    assert "reason: cannot be decoded" in where.with_suffix(".txt").read_text()
    assert list(store.incoming_dir.iterdir()) == []
    assert list_instances(store.conn) == []


def test_a_database_failure_is_a_store_error_and_indexes_nothing(store: ImageStore) -> None:
    spooled = _spool(store)
    store.conn.close()
    with pytest.raises(StoreError, match=f"cannot store {CT_SOP}"):
        store.accept(spooled, "UNIT1")
    assert not list(store.dicom_dir.rglob("*.dcm"))


def test_disk_guard_refuses_below_the_reserve(tmp_path: Path) -> None:
    store = _store(tmp_path / "data", min_free_mb=10**9)
    try:
        with pytest.raises(OutOfSpace, match="reserve is 1000000000 MB"):
            store.accept(_spool(store), "UNIT1")
    finally:
        store.stop()


def test_start_clears_partial_transfers_temps_and_unindexed_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = _store(data)
    kept = store.accept(_spool(store), "UNIT1").path
    store.stop()
    (data / "incoming" / ".spool-abc.dcm").write_bytes(b"half a transfer")
    stray = data / "dicom" / "1.2" / "1.2.3.4.dcm"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"renamed but never indexed")
    (kept.parent / f".{kept.name}.abc.tmp").write_bytes(b"temp")
    store = _store(data)
    try:
        assert list((data / "incoming").iterdir()) == []
        assert not stray.exists()
        assert [p.name for p in kept.parent.iterdir()] == [kept.name]
        assert len(list_instances(store.conn)) == 1
    finally:
        store.stop()


def test_retention_strips_pixels_of_done_studies_only(store: ImageStore) -> None:
    stored = store.accept(_spool(store), "UNIT1")
    conn = store.conn
    assert prune(conn, store.data_dir, older_than_days=0) == 0  # still "received"
    with transaction(conn):
        set_state(conn, CT_SOP, "processing", expected="received")
        set_state(conn, CT_SOP, "analysed", expected="processing")
        set_state(conn, CT_SOP, "forwarded", expected="analysed")
    assert prune(conn, store.data_dir, older_than_days=1) == 0  # not old enough
    assert prune(conn, store.data_dir, older_than_days=0, now=2e9) == 1
    pruned = dcmread(stored.path)
    assert "PixelData" not in pruned
    assert pruned.SOPInstanceUID == CT_SOP
    instance = get_instance(conn, CT_SOP)
    assert instance is not None
    assert instance.pixels_pruned_at is not None
    assert instance.size_bytes == stored.path.stat().st_size < CT.stat().st_size
    assert prune(conn, store.data_dir, older_than_days=0, now=2e9) == 0

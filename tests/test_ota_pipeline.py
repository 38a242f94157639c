"""OTA with the real pipeline worker: the switch happens at an idle moment, and a bundle that passes its health
check but fails on real studies is rolled back after ``failure_threshold`` failures; the studies it failed are
then analysed by the previous model."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.agent import updater_for
from edge.db import DB_FILENAME, connect
from edge.pipeline.worker import PipelineService, migrate_pipeline
from edge.store.header import InstanceHeader
from edge.store.index import get_instance, record_instance
from tests.conftest import wait_until
from tests.ota_helpers import agent_config, bundle_dir, new_repository, publish_bundle, serve
from tests.pipeline_helpers import bright_spot_image, write_radiograph


def _state(conn: sqlite3.Connection, uid: str) -> str:
    instance = get_instance(conn, uid)
    assert instance is not None
    return instance.pipeline_state


@pytest.mark.slow
def test_a_bundle_failing_on_studies_is_rolled_back_by_the_pipeline(tmp_path: Path) -> None:
    factory = bundle_dir(tmp_path / "bundles", "1.0.0")
    repo = new_repository(tmp_path)
    publish_bundle(repo, bundle_dir(tmp_path / "bundles", "1.1.0", fails_on_studies=True))
    data = tmp_path / "data"
    data.mkdir()
    conn = connect(data / DB_FILENAME)
    migrate_pipeline(conn)
    reports: list[dict[str, object]] = []
    with serve(repo.directory) as server:
        config = agent_config(data, factory, server.url, repo.metadata_dir / "1.root.json", failure_threshold=2)
        updater = updater_for(config, lambda body: reports.append(dict(body["ota"])))
        assert updater.apply().outcome == "staged"  # passes its health check (golden vectors)
    service = PipelineService(data, updater.load_active, poll_interval_s=0.05, model_gate=updater)
    service.start()
    try:
        wait_until(lambda: updater.store.read().active == "a", 60, "switched at an idle moment")
        uids = []
        (data / "images").mkdir()
        for i in range(2):
            uid = write_radiograph(data / "images" / f"{i}.dcm", bright_spot_image())
            header = InstanceHeader(uid, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3", "1.2.3.4", "1.2.840.10008.1.2.1", "PX")
            record_instance(
                conn,
                header,
                path=f"images/{i}.dcm",
                size_bytes=1,
                calling_ae="UNIT",
                received_at=f"2026-11-24T01:00:0{i}.000Z",
            )
            uids.append(uid)
        service.notify()
        wait_until(lambda: updater.store.read().active == "factory", 60, "rolled back after two failed studies")
        wait_until(lambda: all(_state(conn, uid) != "received" for uid in uids), 60, "the first studies processed")
        assert reports[-1]["event"] == "rollback"
        # A study after the rollback is analysed by the previous model.
        later = write_radiograph(data / "images" / "later.dcm", bright_spot_image())
        header = InstanceHeader(later, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3", "1.2.3.4", "1.2.840.10008.1.2.1", "PX")
        record_instance(
            conn, header, path="images/later.dcm", size_bytes=1, calling_ae="UNIT", received_at="2026-11-24T01:01:00Z"
        )
        service.notify()
        wait_until(lambda: _state(conn, later) == "analysed", 60, "a later study analysed by the previous model")
        versions = {row[0] for row in conn.execute("SELECT model_version FROM pipeline_results")}
        assert versions == {"1.0.0"}
        assert {_state(conn, uid) for uid in uids} <= {"failed", "analysed"}
    finally:
        service.stop()
        conn.close()

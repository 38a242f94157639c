"""The Prometheus endpoint: histogram buckets (pure), and /metrics and /healthz over real HTTP, parsed with
prometheus-client's own parser."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import AgentConfig, with_overrides
from edge.control import AgentState
from edge.db import DB_FILENAME, connect, transaction
from edge.errors import ControlError
from edge.ops.metrics import BUCKETS_S, MetricsService, latency_buckets
from edge.outbox import Outbox
from edge.pipeline.worker import migrate_pipeline
from tests.conftest import free_port


def test_latency_buckets_are_cumulative() -> None:
    buckets, total = latency_buckets([4.0, 30.0, 30.0, 40_000.0])
    counts = dict(buckets)
    assert counts["0.005"] == 1
    assert counts["0.025"] == 1
    assert counts["0.05"] == 3
    assert counts["30.0"] == 3
    assert counts["+Inf"] == 4
    assert len(buckets) == len(BUCKETS_S) + 1
    assert total == pytest.approx(40.064)
    assert latency_buckets([]) == ([(str(b), 0.0) for b in BUCKETS_S] + [("+Inf", 0.0)], 0)


def _seed(data: Path) -> None:
    conn = connect(data / DB_FILENAME)
    migrate_pipeline(conn)
    Outbox.migrate(conn)
    with transaction(conn):
        for i, (status, total) in enumerate([("analysed", 120.0), ("analysed", 800.0), ("skipped", 3.0)]):
            timings = {"decode": 2.0, "infer": total / 2, "total": total}
            conn.execute(
                "INSERT INTO pipeline_results (sop_instance_uid, status, reason, model_id, model_version, clinical, "
                "backend, timings_json, findings_json, recorded_at) "
                "VALUES (?, ?, '', 'm', '1.0', 0, 'onnxruntime-cpu', ?, '[]', ?)",
                (f"1.2.{i}", status, json.dumps(timings), f"2026-11-24T00:00:0{i}Z"),
            )
    outbox = Outbox.open(with_overrides(AgentConfig(), agent={"data_dir": str(data)}))
    with transaction(conn):
        outbox.enqueue(conn, "health", {"ok": True})
        outbox.enqueue(conn, "results", {"n": 1})
    conn.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[MetricsService, str]]:
    data = tmp_path / "data"
    _seed(data)
    config = with_overrides(AgentConfig(), agent={"data_dir": str(data)}, metrics={"port": free_port()})
    service = MetricsService(config.metrics, AgentState(config))
    service.start()
    yield service, f"http://127.0.0.1:{service.port}"
    service.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_endpoint(endpoint: tuple[MetricsService, str]) -> None:
    _, base = endpoint
    status, text = _get(base + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("btt_instances_analysed_total", ())] == 2
    assert samples[("btt_instances_failed_total", ())] == 0
    assert samples[("btt_stage_latency_seconds_count", (("stage", "total"),))] == 3
    assert samples[("btt_stage_latency_seconds_bucket", (("le", "0.25"), ("stage", "total")))] == 2
    assert samples[("btt_stage_latency_seconds_sum", (("stage", "infer"),))] == pytest.approx(0.4615)
    assert samples[("btt_stage_latency_seconds_count", (("stage", "preprocess"),))] == 0
    assert samples[("btt_outbox_depth", (("kind", "health"),))] == 1
    assert samples[("btt_outbox_depth", (("kind", "results"),))] == 1
    assert samples[("btt_sync_lag_seconds", ())] >= 0
    assert samples[("btt_disk_free_bytes", ())] > 0
    assert samples[("btt_relay_connected", ())] == 0
    model = [k for k in samples if k[0] == "btt_model_info"]
    assert model
    assert dict(model[0][1])["backend"] == "onnxruntime-cpu"
    assert dict(model[0][1])["precision"] == "fp32"  # rows recorded before precisions were kept
    assert samples[("btt_up", ())] == 1


def test_health_endpoint(endpoint: tuple[MetricsService, str], tmp_path: Path) -> None:
    _, base = endpoint
    status, text = _get(base + "/healthz")
    doc = json.loads(text)
    assert doc["ok"] is (status == 200)
    assert _get(base + "/nothing")[0] == 404
    # a disk below the reserve is an error: 503 and says why
    config = with_overrides(
        AgentConfig(),
        agent={"data_dir": str(tmp_path / "data")},
        dicom={"min_free_mb": 10**12},
        metrics={"port": free_port()},
    )
    service = MetricsService(config.metrics, AgentState(config))
    service.start()
    try:
        status, text = _get(f"http://127.0.0.1:{service.port}/healthz")
    finally:
        service.stop()
    assert status == 503
    doc = json.loads(text)
    disk = next(c for c in doc["checks"] if c["name"] == "disk")
    assert disk["status"] == "fail"
    assert "images are refused" in disk["detail"]
    assert {"level": "error", "text": f"disk: {disk['detail']}"} in doc["alerts"]


def test_port_in_use_is_a_clear_error(endpoint: tuple[MetricsService, str]) -> None:
    service, _ = endpoint
    clash = MetricsService(service.config, service.state)
    with pytest.raises(ControlError, match=r"cannot serve metrics on 127\.0\.0\.1"):
        clash.start()

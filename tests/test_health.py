"""The one health model (edge.ops.health): the checks of a real agent's overview, each condition judged once, and
``/healthz``, the metrics and doctor agreeing on it. The agent as a process, with a simulated unit:
test_health_agent.py."""

from __future__ import annotations

from pathlib import Path

from edge.config import AgentConfig, with_overrides
from edge.control import AgentState
from edge.db import DB_FILENAME, connect
from edge.ops.health import NOTICE, Check, Health, agent_health, box_checks, overview_checks
from edge.ops.metrics import MetricsService
from edge.store.index import migrate_index
from edge.unit.exposures import migrate_unit, record_link
from firmware_bridge.driver import DriverStatus


def _config(data: Path, **sections: dict[str, object]) -> AgentConfig:
    values: dict[str, dict[str, object]] = {"receipts": {"enabled": False}, **sections}
    values.setdefault("agent", {})["data_dir"] = str(data)
    return with_overrides(AgentConfig(), **values)


def _db(data: Path) -> Path:
    """The agent's database, as its store creates it at start."""
    conn = connect(data / DB_FILENAME)
    migrate_index(conn)
    migrate_unit(conn)
    conn.close()
    return data


def _unit_db(data: Path, state: str, error: str | None = None) -> None:
    conn = connect(_db(data) / DB_FILENAME)
    record_link(conn, "/dev/pts/7", DriverStatus(state, 1 if state == "connected" else None, error))
    conn.close()


def _by_name(checks: list[Check]) -> dict[str, list[Check]]:
    out: dict[str, list[Check]] = {}
    for c in checks:
        out.setdefault(c.name, []).append(c)
    return out


def test_the_unit_link_is_the_one_the_agent_runs(tmp_path: Path) -> None:
    """`run --serial` (here: the running config's port) is what counts, not the configuration file's."""
    data = tmp_path / "data"
    _unit_db(data, "connected")
    state = AgentState(_config(data, unit={"port": "/dev/pts/7"}))
    unit = _by_name(overview_checks(state.overview().to_json()))["unit link"]
    assert [(c.status, c.detail) for c in unit] == [("ok", "/dev/pts/7: connected")]
    _unit_db(data, "closed", "reading /dev/pts/7: device reports readiness to read but returned no data")
    down = _by_name(overview_checks(state.overview().to_json()))["unit link"]
    assert [c.status for c in down] == ["fail"]
    assert "returned no data" in down[0].detail
    assert "/dev/serial/by-id" in down[0].fix
    none = overview_checks(AgentState(_config(_db(tmp_path / "other"))).overview().to_json())
    assert _by_name(none)["unit link"][0].status == "ok"


def test_each_condition_is_judged_once(tmp_path: Path) -> None:
    """Disk below the reserve, no loadable model and the unit link down: three failures, each with its fix, not
    each again as an alert; the other alerts stay checks of their own."""
    data = _db(tmp_path / "data")
    config = _config(
        data,
        dicom={"min_free_mb": 10**12},
        pipeline={"bundle_path": str(tmp_path / "no-bundle")},
        unit={"port": "/dev/pts/7"},
    )
    overview = AgentState(config).overview().to_json()
    assert {a["level"] for a in overview["alerts"]} == {"error"}
    checks = overview_checks(overview)
    failed = sorted(c.name for c in checks if c.status == "fail")
    assert failed == ["disk", "model", "unit link"]
    assert all(c.fix for c in checks if c.status == "fail")
    overview["notices"].append({"level": "warning", "text": "3 image(s) failed analysis"})
    extra = [c for c in overview_checks(overview) if c.name == NOTICE]
    assert [(c.status, c.detail) for c in extra] == [("warn", "3 image(s) failed analysis")]
    alerts = Health(tuple(overview_checks(overview))).alerts()
    assert {"level": "warning", "text": "3 image(s) failed analysis"} in alerts


def test_health_json_alerts_and_ok() -> None:
    health = Health((Check("a", "ok", "fine"), Check("b", "warn", "look"), Check("c", "fail", "broken", "fix it")))
    assert not health.ok
    doc = health.to_json()
    assert doc["ok"] is False
    assert [c["name"] for c in doc["checks"]] == ["a", "b", "c"]
    assert doc["alerts"] == [{"level": "error", "text": "c: broken"}, {"level": "warning", "text": "b: look"}]
    assert Health((Check("b", "warn", "look"),)).ok


def test_healthz_metrics_and_doctor_agree(tmp_path: Path) -> None:
    """No device identity: doctor fails it, so /healthz answers 503 and btt_healthy is 0, with the same check."""
    data = _db(tmp_path / "data")
    config = with_overrides(AgentConfig(), agent={"data_dir": str(data)}, pipeline={"enabled": False})
    doctor_keys = [c for c in box_checks(config) if c.name == "device keys"]
    state = AgentState(config)
    health = agent_health(state)
    assert [c for c in health.checks if c.name == "device keys"] == doctor_keys
    assert doctor_keys[0].status == "fail"
    assert "btt-edge provision" in doctor_keys[0].fix
    assert not health.ok
    service = MetricsService(config.metrics, state)
    status, _, body = service.respond("/healthz")
    assert status == 503
    assert b'"device keys"' in body
    metrics = service.respond("/metrics")[2].decode()
    assert "btt_healthy 0.0" in metrics
    assert 'btt_health_checks{status="fail"} 1.0' in metrics
    provisioned = with_overrides(config, receipts={"enabled": False})
    assert agent_health(AgentState(provisioned)).ok
    assert "btt_healthy 1.0" in MetricsService(config.metrics, AgentState(provisioned)).respond("/metrics")[2].decode()

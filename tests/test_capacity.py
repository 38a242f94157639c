"""Spare capacity on the device: offers, signed jobs in a limited worker, compute receipts, clinical pre-emption."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.capacity import CapacityService
from edge.capacity.fetch import DirectoryFetcher
from edge.capacity.jobrun import pack_batch
from edge.capacity.messages import check_job
from edge.capacity.policy import OpeningHours, decide
from edge.capacity.probe import Accelerator, parse_meminfo, parse_tegrastats
from edge.capacity.runner import process_state
from edge.cli import main as cli_main
from edge.config import AgentConfig, AgentSection, CapacityConfig
from edge.errors import ConfigError, JobRejected
from edge.outbox import Outbox
from ota.repository import bundle_archive
from protocol.capacity import JOB, OFFER, RESULT, WITHDRAW, outputs_agree, sign, verify
from protocol.clock import now_ms
from protocol.keys import PrivateKey, generate_key
from tests.conftest import wait_until
from tests.receipts_helpers import Box, make_box

REFERENCE = Path(__file__).resolve().parents[1] / "models" / "bundles" / "reference-dental"


class Activity:
    """Clinical work, switched by the test."""

    def __init__(self) -> None:
        self.flag = False

    def busy(self) -> bool:
        return self.flag

    def close(self) -> None:
        self.flag = False


def _accelerator() -> Accelerator:
    return Accelerator("cpu", "test CPU", 8192, 8192, 0, 0)


def _blob(directory: Path, data: bytes) -> str:
    return DirectoryFetcher(directory).put(data)


def _bundle_tar() -> bytes:
    return bundle_archive(REFERENCE)[0]


def _batch(items: int) -> bytes:
    return pack_batch(np.random.default_rng(items).normal(0, 1, (items, 1, 512, 1024)))


class Rig:
    def __init__(self, tmp_path: Path, relay: PrivateKey, **capacity: Any) -> None:
        self.box: Box = make_box(tmp_path / "box")
        self.blobs = tmp_path / "blobs"
        self.blobs.mkdir()
        self.relay = relay
        cfg = {
            "enabled": True,
            "relay_key": relay.public.key.hex(),
            "opening_hours": (),
            "idle_minutes": 0.0,
            "max_load": 64.0,
            "max_memory_mb": 2048,
            "resume_after_s": 0.3,
            **capacity,
        }
        self.config = AgentConfig(agent=AgentSection(data_dir=self.box.data_dir), capacity=CapacityConfig(**cfg))
        self.outbox = Outbox.open(self.config)
        self.activity = Activity()
        self.service = CapacityService(
            self.config.capacity,
            self.config.agent.data_dir,
            self.box.book,
            self.outbox,
            self.activity,
            fetcher=DirectoryFetcher(self.blobs),
            accelerator=_accelerator,
            score=lambda: 1234,
        )

    def messages(self, kind: str) -> list[dict[str, Any]]:
        bodies = [json.loads(item.body) for item in Outbox.pending(self.box.conn, 1000) if item.kind == "offers"]
        return [b for b in bodies if b["signed"]["type"] == kind]

    def offer(self) -> dict[str, Any]:
        wait_until(lambda: self.messages(OFFER), 10, "an offer")
        signed: dict[str, Any] = self.messages(OFFER)[-1]["signed"]
        return signed

    def job(self, offer: dict[str, Any], items: int, **overrides: Any) -> dict[str, Any]:
        fields = {
            "job_id": overrides.pop("job_id", f"job-{items}-{time.monotonic_ns()}"),
            "device": offer["device"],
            "offer_id": offer["offer_id"],
            "bundle": _blob(self.blobs, _bundle_tar()),
            "batch": _blob(self.blobs, _batch(items)),
            "items": items,
            "price_per_item_micro": offer["price_per_item_micro"],
            "issued_ms": now_ms(),
            "expires_ms": now_ms() + 60_000,
            **overrides,
        }
        return sign(JOB, fields, self.relay)

    def job_state(self, job_id: str) -> str | None:
        row = self.box.conn.execute("SELECT state, reason FROM capacity_jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])


@pytest.fixture
def relay() -> PrivateKey:
    return generate_key()


@pytest.fixture
def rig(tmp_path: Path, relay: PrivateKey) -> Iterator[Rig]:
    rig = Rig(tmp_path, relay)
    rig.service.start()
    yield rig
    rig.service.stop()


def test_job_runs_in_worker_and_returns_signed_result_with_compute_receipts(rig: Rig) -> None:
    offer = rig.offer()
    assert offer["score_mflops"] == 1234
    assert offer["accelerator"]["kind"] == "cpu"
    verify(OFFER, rig.messages(OFFER)[-1], rig.box.identity.key.public)
    job = rig.job(offer, 2)
    rig.service.submit(json.dumps(job).encode())
    wait_until(lambda: rig.job_state(job["signed"]["job_id"]) == "done", 60, "the job to finish")
    result = verify(RESULT, rig.messages(RESULT)[-1], rig.box.identity.key.public)
    assert result["status"] == "done"
    assert result["items"] == 2
    assert len(result["outputs"]) == 2
    assert result["batch"] == job["signed"]["batch"]
    assert result["device_ms"] > 0
    kinds = {
        row[0]: row[1]
        for row in rig.box.conn.execute("SELECT kind, units FROM receipts WHERE seq IN (?, ?)", result["receipts"])
    }
    assert kinds["compute"] == 2
    assert kinds["compute-seconds"] >= 1


def test_clinical_image_pauses_running_job_and_withdraws_offer(rig: Rig) -> None:
    offer = rig.offer()
    job = rig.job(offer, 4)
    rig.service.submit(json.dumps(job).encode())
    wait_until(lambda: rig.service._job is not None, 30, "the worker to start")
    worker = rig.service._job
    assert worker is not None
    time.sleep(0.5)
    rig.activity.flag = True  # an association opens: an image is arriving
    wait_until(lambda: rig.service.preemptions, 5, "pre-emption")
    assert process_state(worker.pid) == "T"
    assert rig.service.preemptions[0] < 0.1
    wait_until(lambda: rig.messages(WITHDRAW), 5, "the offer's withdrawal")
    assert rig.messages(WITHDRAW)[-1]["signed"]["reason"] == "clinical work"
    time.sleep(0.5)
    assert process_state(worker.pid) == "T"  # stays paused while clinical work goes on
    rig.activity.flag = False
    wait_until(lambda: rig.job_state(job["signed"]["job_id"]) == "done", 90, "the resumed job to finish")


def test_kill_mode_reports_preempted_job_without_receipt(tmp_path: Path, relay: PrivateKey) -> None:
    rig = Rig(tmp_path, relay, preempt="kill")
    rig.service.start()
    try:
        job = rig.job(rig.offer(), 4)
        rig.service.submit(json.dumps(job).encode())
        wait_until(lambda: rig.service._job is not None, 30, "the worker to start")
        rig.activity.flag = True
        wait_until(lambda: rig.job_state(job["signed"]["job_id"]) == "preempted", 10, "the job to be pre-empted")
        result = verify(RESULT, rig.messages(RESULT)[-1], rig.box.identity.key.public)
        assert result["status"] == "preempted"
        assert result["outputs"] == []
        assert result["receipts"] == []
        assert rig.box.conn.execute("SELECT COUNT(*) FROM receipts WHERE kind LIKE 'compute%'").fetchone()[0] == 0
    finally:
        rig.service.stop()


def test_forged_tampered_and_mismatched_jobs_are_refused(rig: Rig) -> None:
    offer = rig.offer()
    forged = sign(JOB, rig.job(offer, 1)["signed"], generate_key())
    tampered = rig.job(offer, 1)
    tampered["signed"]["items"] = 2
    wrong_blob = rig.job(offer, 1)
    (rig.blobs / wrong_blob["signed"]["batch"]).write_bytes(b"not the batch")
    for job in (forged, tampered, wrong_blob):
        rig.service.submit(json.dumps(job).encode())
    ids = [job["signed"]["job_id"] for job in (forged, tampered, wrong_blob)]
    wait_until(lambda: all(rig.job_state(job_id) == "rejected" for job_id in ids), 60, "the refusals")
    reasons = [r[0] for r in rig.box.conn.execute("SELECT reason FROM capacity_jobs ORDER BY updated_ms")]
    assert any("does not verify" in r for r in reasons)
    assert any("sha256" in r for r in reasons)


def _job_fields(issued_ms: int) -> dict[str, object]:
    """A job for device ``d`` and offer ``o1``: 2 items at 10 micro-units each, expiring in a minute."""
    return {
        "job_id": "j",
        "device": "d",
        "offer_id": "o1",
        "bundle": "a" * 64,
        "batch": "b" * 64,
        "items": 2,
        "price_per_item_micro": 10,
        "issued_ms": issued_ms,
        "expires_ms": now_ms() + 60_000,
    }


def test_job_for_expired_offer_is_refused(relay: PrivateKey) -> None:
    made = now_ms() - 10_000
    offer = {"offer_id": "o1", "expires_ms": made + 5_000, "max_items": 8, "price_per_item_micro": 10}
    fields = _job_fields(made)
    with pytest.raises(JobRejected, match="expired"):
        check_job(sign(JOB, fields, relay), relay.public, device="d", offer=offer, now_ms=now_ms())
    live = {**offer, "expires_ms": now_ms() + 5_000}
    assert check_job(sign(JOB, fields, relay), relay.public, device="d", offer=live, now_ms=now_ms())["items"] == 2
    with pytest.raises(JobRejected, match="outside"):
        check_job(sign(JOB, {**fields, "items": 9}, relay), relay.public, device="d", offer=live, now_ms=now_ms())
    with pytest.raises(JobRejected, match="is not 1-64 letters"):  # ids become file names
        check_job(sign(JOB, {**fields, "job_id": "../x"}, relay), relay.public, device="d", offer=live, now_ms=now_ms())
    with pytest.raises(JobRejected, match="price"):
        check_job(
            sign(JOB, {**fields, "price_per_item_micro": 1}, relay),
            relay.public,
            device="d",
            offer=live,
            now_ms=now_ms(),
        )


def test_cli_switch_withdraws_offer(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.offer()
    data_dir = str(rig.box.data_dir)
    assert cli_main(["capacity", "disable", "--data-dir", data_dir]) == 0
    wait_until(lambda: rig.messages(WITHDRAW), 5, "the withdrawal")
    assert cli_main(["capacity", "status", "--data-dir", data_dir, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert doc["enabled"] is False
    assert doc["offer"] is None
    assert doc["switch"] == "btt-edge capacity"


def test_policy_opening_hours_idle_and_caps() -> None:
    cfg = CapacityConfig(enabled=True, opening_hours=("mon-fri 07:00-19:00", "sun 22:00-02:00"), idle_minutes=10)
    hours = OpeningHours.parse(cfg.opening_hours)
    monday_noon, monday_night = dt.datetime(2026, 11, 23, 12), dt.datetime(2026, 11, 23, 21)
    args: dict[str, Any] = {
        "enabled": True,
        "idle_s": 3600.0,
        "load_per_core": 0.1,
        "free_memory_mb": 4096,
        "hours": hours,
    }
    assert decide(cfg, now=monday_night, **args).offer
    assert decide(cfg, now=monday_noon, **args).reason == "clinic is open"
    assert hours.is_open(dt.datetime(2026, 11, 23, 1))
    assert not hours.is_open(dt.datetime(2026, 11, 24, 1))
    assert not decide(cfg, now=monday_night, **{**args, "idle_s": 60.0}).offer
    assert "load" in decide(cfg, now=monday_night, **{**args, "load_per_core": 0.9}).reason
    assert "memory" in decide(cfg, now=monday_night, **{**args, "free_memory_mb": 100}).reason
    assert not decide(cfg, now=monday_night, **{**args, "enabled": False}).offer
    capped = dataclasses.replace(cfg, max_power_w=30)
    assert "power" in decide(capped, now=monday_night, **{**args, "power_w": 45}).reason
    assert decide(capped, now=monday_night, **{**args, "power_w": 12}).offer
    with pytest.raises(ConfigError, match="opening_hours"):
        OpeningHours.parse(("weekdays 9-5",))


def test_probes_parse_tegrastats_and_meminfo() -> None:
    jetson = parse_tegrastats(
        "RAM 2448/7764MB (lfb 1x4MB) SWAP 0/3882MB CPU [2%@1420] GR3D_FREQ 12%@[305] VDD_IN 4200mW/4200mW"
    )
    assert (jetson.kind, jetson.memory_mb, jetson.free_memory_mb, jetson.utilisation_pct, jetson.power_w) == (
        "jetson",
        7764,
        5316,
        12,
        4,
    )
    assert parse_meminfo("MemTotal:  2048000 kB\nMemFree: 10 kB\nMemAvailable:  1024000 kB\n") == (2000, 1000)
    with pytest.raises(ValueError, match="not a tegrastats line"):
        parse_tegrastats("garbage")


def test_outputs_agree_within_tolerance() -> None:
    assert outputs_agree([1_000_000, 5], [1_000_500, 5])
    assert not outputs_agree([0, 0], [0, 5000])
    assert not outputs_agree([1], [1, 2])


class _FakeNvml:
    """The calls :mod:`edge.capacity.probe` makes, as pynvml documents them (memory in bytes, power in mW)."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.shut = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA RTX A2000"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return type("Memory", (), {"total": 6 * 2**30, "free": 5 * 2**30, "used": 2**30})()

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return type("Utilization", (), {"gpu": 7, "memory": 3})()

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 21_500


def test_probe_prefers_nvml_then_tegrastats_then_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GPU here: NVML is a fake module with pynvml's documented calls, tegrastats a script printing its line."""
    import sys

    from edge.capacity.probe import probe_accelerator

    tegrastats = tmp_path / "tegrastats"
    tegrastats.write_text(
        "#!/bin/sh\necho 'RAM 3000/7620MB (lfb 2x4MB) CPU [5%@729] GR3D_FREQ 40%@[624] VDD_IN 5100mW/5100mW'\n"
    )
    tegrastats.chmod(0o755)
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpu = probe_accelerator(tegrastats=str(tegrastats))
    assert (gpu.kind, gpu.name, gpu.memory_mb, gpu.free_memory_mb, gpu.utilisation_pct, gpu.power_w) == (
        "cuda",
        "NVIDIA RTX A2000",
        6144,
        5120,
        7,
        21,
    )
    assert fake.shut
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    jetson = probe_accelerator(tegrastats=str(tegrastats))
    assert (jetson.kind, jetson.memory_mb, jetson.utilisation_pct, jetson.power_w) == ("jetson", 7620, 40, 5)
    assert probe_accelerator(tegrastats=None).kind == "cpu"


@pytest.mark.parametrize("bad", [float("nan"), "\udc80", 2**60], ids=["nan", "lone-surrogate", "unsafe-integer"])
def test_a_job_with_a_value_nothing_can_sign_is_refused_with_its_reason(relay: PrivateKey, bad: object) -> None:
    """A job whose signed part has no canonical encoding (as arbitrary JSON from the broker may) is a JobRejected
    naming the field's problem, never an encoding error escaping to the job worker."""
    envelope = sign(JOB, _job_fields(now_ms()), relay)
    envelope["signed"]["note"] = bad
    live = {"offer_id": "o1", "expires_ms": now_ms() + 5_000, "max_items": 8, "price_per_item_micro": 10}
    with pytest.raises(JobRejected, match=r"job j: .*(integer|Unicode|float|number|NaN)"):
        check_job(envelope, relay.public, device="d", offer=live, now_ms=now_ms())

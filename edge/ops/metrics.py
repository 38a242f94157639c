"""The Prometheus metrics and health endpoint: ``/metrics`` (text exposition format) and ``/healthz`` (JSON).

Metrics are computed at scrape time from the agent's database and live components (:class:`AgentState`), so they
survive restarts and never drift from what the agent recorded:

* ``btt_studies_received_total`` / ``btt_instances_received_total``, ``btt_instances_analysed_total``,
  ``btt_instances_failed_total``, ``btt_instances_by_state{state}``;
* ``btt_stage_latency_seconds{stage}`` — a histogram of each pipeline stage (decode, preprocess, infer,
  postprocess, total) over every recorded analysis;
* ``btt_outbox_depth{kind}``, ``btt_outbox_rejected``, ``btt_outbox_dropped_total{kind}``, ``btt_sync_lag_seconds``
  (age of the oldest item the relay has not acknowledged), ``btt_relay_connected``;
* ``btt_disk_free_bytes``, ``btt_disk_total_bytes``, ``btt_model_info{model,version,backend}``,
  ``btt_result_deliveries{state}``, ``btt_alerts{level}``, ``btt_up``;
* ``btt_healthy`` (1 when ``/healthz`` answers 200) and ``btt_health_checks{status}``, from the same checks.

``/healthz`` is the agent's health (:func:`edge.ops.health.agent_health`, the checks ``btt-edge doctor`` makes):
200 with ``{"ok": true, "checks": [...], "alerts": [...]}``, or 503 when a check fails (disk below the reserve, no
loadable model, unit link down, no usable device identity, the clock before 2026...). No patient data is exposed:
counts, states and versions only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from edge.config import MetricsConfig
from edge.control.state import STAGES, AgentState
from edge.errors import ControlError
from edge.ops.health import agent_health
from edge.pipeline.records import analysed_count, recorded_timings
from edge.store.index import index_counts, state_counts
from runtime.logs import event

__all__ = ["BUCKETS_S", "AgentCollector", "MetricsService", "latency_buckets"]

log = logging.getLogger("edge.ops.metrics")

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds of the latency histogram buckets, seconds."""


def latency_buckets(samples_ms: Iterable[float]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (``le`` label, count) and the sum in seconds of ``samples_ms``."""
    values = sorted(s / 1000.0 for s in samples_ms)
    buckets: list[tuple[str, float]] = []
    i = 0
    for bound in BUCKETS_S:
        while i < len(values) and values[i] <= bound:
            i += 1
        buckets.append((str(bound), float(i)))
    buckets.append(("+Inf", float(len(values))))
    return buckets, sum(values)


class AgentCollector:
    """A Prometheus collector that reads the agent's state at every scrape."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        overview = self.state.overview()
        with self.state.db() as conn:
            yield from self._counts(conn)
            yield from self._latencies(conn)
        yield from self._relay(overview.relay)
        disk = overview.disk
        yield GaugeMetricFamily("btt_disk_free_bytes", "Free bytes on the data disk", value=disk.free_mb * 2**20)
        yield GaugeMetricFamily("btt_disk_total_bytes", "Size of the data disk", value=disk.total_mb * 2**20)
        pipeline = overview.pipeline
        model = pipeline.model
        labels = ["model", "version", "backend", "precision"]
        info = GaugeMetricFamily("btt_model_info", "The active model (1)", labels=labels)
        info.add_metric(
            [
                str(model.get("id", "none")),
                str(model.get("version", "")),
                str(pipeline.backend or ""),
                str(pipeline.precision or ""),
            ],
            1,
        )
        yield info
        deliveries = GaugeMetricFamily("btt_result_deliveries", "Result deliveries by state", labels=["state"])
        for state, n in sorted(overview.results.deliveries.items()):
            deliveries.add_metric([state], n)
        yield deliveries
        alerts = GaugeMetricFamily("btt_alerts", "Open alerts by level", labels=["level"])
        for level in ("error", "warning"):
            alerts.add_metric([level], sum(a["level"] == level for a in overview.alerts))
        yield alerts
        health = agent_health(self.state, overview)
        yield GaugeMetricFamily("btt_healthy", "No health check fails (/healthz answers 200)", value=int(health.ok))
        checks = GaugeMetricFamily("btt_health_checks", "Health checks by status", labels=["status"])
        for status in ("ok", "warn", "fail"):
            checks.add_metric([status], sum(c.status == status for c in health.checks))
        yield checks
        yield GaugeMetricFamily("btt_up", "The agent answers", value=1)

    @staticmethod
    def _counts(conn: sqlite3.Connection) -> Iterator[Metric]:
        studies, instances = index_counts(conn)
        by_state = state_counts(conn)
        yield CounterMetricFamily("btt_studies_received", "Studies received", value=studies)
        yield CounterMetricFamily("btt_instances_received", "Images received", value=instances)
        yield CounterMetricFamily("btt_instances_analysed", "Images analysed by the model", value=analysed_count(conn))
        yield CounterMetricFamily(
            "btt_instances_failed", "Images whose analysis failed for good", value=by_state.get("failed", 0)
        )
        states = GaugeMetricFamily("btt_instances_by_state", "Images by pipeline state", labels=["state"])
        for state, n in by_state.items():
            states.add_metric([state], n)
        yield states

    @staticmethod
    def _latencies(conn: sqlite3.Connection) -> Iterator[Metric]:
        samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for timings in recorded_timings(conn):
            for stage, ms in timings.items():
                if stage in samples and isinstance(ms, (int, float)):
                    samples[stage].append(float(ms))
        histogram = HistogramMetricFamily(
            "btt_stage_latency_seconds", "Latency of each pipeline stage per image", labels=["stage"]
        )
        for stage in STAGES:
            buckets, total = latency_buckets(samples[stage])
            histogram.add_metric([stage], buckets, total)
        yield histogram

    @staticmethod
    def _relay(relay: dict[str, Any]) -> Iterator[Metric]:
        outbox = relay["outbox"]
        depth = GaugeMetricFamily("btt_outbox_depth", "Outbox items waiting for the relay", labels=["kind"])
        for kind, n in sorted(outbox["pending"].items()):
            depth.add_metric([kind], n)
        yield depth
        yield GaugeMetricFamily("btt_outbox_rejected", "Outbox items the relay rejected", value=outbox["rejected"])
        dropped = CounterMetricFamily("btt_outbox_dropped", "Telemetry items dropped (outbox full)", labels=["kind"])
        for kind, n in sorted(outbox.get("dropped", {}).items()):
            dropped.add_metric([kind], n)
        yield dropped
        yield GaugeMetricFamily(
            "btt_sync_lag_seconds",
            "Age of the oldest outbox item the relay has not acknowledged",
            value=outbox.get("oldest_pending_age_s", 0),
        )
        yield GaugeMetricFamily(
            "btt_relay_connected",
            "The MQTT link to the relay is up (1), down (0)",
            value=1 if relay["connected"] else 0,
        )


class MetricsService:
    """Serves ``/metrics`` and ``/healthz`` on ``[metrics] bind_address:port`` (a :class:`~edge.agent.Service`)."""

    name = "metrics"

    def __init__(self, config: MetricsConfig, state: AgentState) -> None:
        self.config = config
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(state))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            raise ControlError("the metrics endpoint is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    status, ctype, body = service.respond(self.path)
                except Exception:
                    log.exception("metrics request %s failed", self.path)
                    status, ctype, body = 500, "text/plain", b"internal error (see the agent's log)\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:  # scrapes are not events
                return

        try:
            self._server = ThreadingHTTPServer((self.config.bind_address, self.config.port), Handler)
        except OSError as exc:
            raise ControlError(
                f"cannot serve metrics on {self.config.bind_address}:{self.config.port}: {exc.strerror or exc}"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        event(log, "metrics endpoint ready", address=self.config.bind_address, port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of ``path``."""
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if route == "/healthz":
            health = agent_health(self.state)
            return (200 if health.ok else 503), "application/json", json.dumps(health.to_json()).encode() + b"\n"
        return 404, "text/plain", b"not found: /metrics or /healthz\n"

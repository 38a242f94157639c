"""Retention: remove the pixel data of studies that are fully processed and forwarded.

A study is done when every one of its instances is in a state of :data:`DONE_STATES` (its results reached
the clinic's PACS, or the model could not read it). ``retention.prune_after_days`` after the last of them got
there, :func:`prune` rewrites each file without its pixel data (the header stays, for the audit trail and the
study list) and records ``pixels_pruned_at`` and the new size; one transaction per instance. 0 days = never.
:class:`Pruner` runs it every ``retention.interval_s``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from pydicom import dcmread

from edge.background import BackgroundLoop
from edge.config import RetentionConfig
from edge.db import DB_FILENAME, connect, transaction
from edge.store.index import PipelineState, migrate_index, utc_now
from runtime.durable import atomic_open
from runtime.logs import event

__all__ = ["DONE_STATES", "Pruner", "prune"]

log = logging.getLogger("edge.retention")

DONE_STATES: tuple[PipelineState, ...] = ("forwarded", "skipped")


def _cutoff(days: int, now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.999Z", time.gmtime(now - days * 86400))


def prune(conn: sqlite3.Connection, data_dir: Path, *, older_than_days: int, now: float | None = None) -> int:
    """Strip the pixel data of every instance of done studies older than ``older_than_days``; return the count."""
    marks = ", ".join("?" * len(DONE_STATES))
    cutoff = _cutoff(older_than_days, time.time() if now is None else now)
    rows = conn.execute(
        f"""
        SELECT i.sop_instance_uid, i.path FROM instances i JOIN series se ON se.series_uid = i.series_uid
        WHERE i.pixels_pruned_at IS NULL AND se.study_uid IN (
            SELECT se2.study_uid FROM series se2 JOIN instances i2 ON i2.series_uid = se2.series_uid
            GROUP BY se2.study_uid
            HAVING SUM(i2.pipeline_state NOT IN ({marks})) = 0 AND MAX(i2.state_changed_at) <= ?
        )
        ORDER BY i.received_at
        """,
        (*DONE_STATES, cutoff),
    ).fetchall()
    pruned = 0
    for sop, relative in rows:
        path = data_dir / relative
        try:
            if path.exists():
                ds = dcmread(path, stop_before_pixels=True)
                with atomic_open(path) as fh:
                    ds.save_as(fh, enforce_file_format=True)
        except Exception as exc:  # one unreadable file must not hold up the others; it is retried next pass
            event(log, "pruning failed", level=logging.WARNING, sop=sop, reason=f"{type(exc).__name__}: {exc}")
            continue
        size = path.stat().st_size if path.exists() else 0
        with transaction(conn):
            conn.execute(
                "UPDATE instances SET pixels_pruned_at = ?, size_bytes = ? WHERE sop_instance_uid = ?",
                (utc_now(), size, sop),
            )
        pruned += 1
    if pruned:
        event(log, "pixel data pruned", instances=pruned, older_than_days=older_than_days)
    return pruned


class Pruner(BackgroundLoop):
    """Runs :func:`prune` every ``interval_s`` in a background thread (a :class:`~edge.agent.Service`)."""

    name = "retention"

    def __init__(self, config: RetentionConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        super().__init__()

    def start(self) -> None:
        """Start the background thread (nothing runs when ``prune_after_days`` is 0)."""
        if self.config.prune_after_days:
            super().start()

    def _run(self) -> None:
        conn = connect(self.data_dir / DB_FILENAME)
        try:
            migrate_index(conn)
            while not self._stop.is_set():
                prune(conn, self.data_dir, older_than_days=self.config.prune_after_days)
                self._stop.wait(self.config.interval_s)
        finally:
            conn.close()

"""Wiring: the updater built from the ``[ota]`` section, its reports to the outbox, and the agent service.

:class:`OtaService` holds ``<data_dir>/ota/agent.lock`` while the agent runs (so ``btt-edge ota apply`` leaves
the switch to the agent's pipeline at its next idle moment), asks the repository every ``check_interval_s``
and when :meth:`OtaService.notify` is called (the relay's ``ota-available`` command), and installs up to
``staged``. A failure is logged and retried at the next check; it never stops the agent (an unreadable trusted
root, a setting, stops it at start).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from edge.background import BackgroundLoop
from edge.config import OtaConfig
from edge.errors import EdgeError, ModelError, OutboxError
from edge.outbox import Outbox
from ota.client import UpdateClient
from ota.health import AnalyzerLoader
from ota.http import TufFetcher
from ota.slots import SlotStore
from ota.updater import OtaUpdater, Reporter
from runtime.logs import event

__all__ = ["OtaService", "agent_running", "build_updater", "outbox_reporter"]

log = logging.getLogger("edge.ota")


def outbox_reporter(outbox: Outbox, data_dir: Path) -> Reporter:
    """Queue OTA events for the relay as outbox items of kind ``health`` (one transaction each). A database
    failure becomes :class:`~edge.errors.OutboxError`, which the updater logs: a report never blocks a rollback."""
    from edge.db import DB_FILENAME, connect, transaction

    path = data_dir / DB_FILENAME

    def report(body: Mapping[str, Any]) -> None:
        try:
            conn = connect(path)
            try:
                with transaction(conn):
                    outbox.enqueue(conn, "health", body)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot queue the OTA report: {exc}") from exc

    return report


def build_updater(
    ota: OtaConfig,
    data_dir: Path,
    *,
    factory: Path,
    load: AnalyzerLoader,
    device_id: str,
    report: Reporter | None = None,
) -> OtaUpdater:
    """The updater of ``data_dir`` from the ``[ota]`` section (without a repository when it is off): ``factory`` is
    the bundle installed with the agent, ``load`` opens a bundle on the device's backend. Reads nothing: the trusted
    root is read at :meth:`OtaService.start` or the first check (:meth:`ota.client.UpdateClient.load_root`)."""
    client = None
    if ota.repository_url:
        client = UpdateClient(
            repository_url=ota.repository_url,
            metadata_dir=data_dir / "ota" / "metadata",
            trusted_root=Path(ota.trusted_root),
            fetcher=TufFetcher(
                timeout_s=ota.timeout_s, ca_file=ota.ca_file, min_rate=ota.min_download_rate, max_s=ota.max_download_s
            ),
            max_bundle_bytes=ota.max_bundle_bytes,
        )
    return OtaUpdater(
        SlotStore(data_dir / "ota", factory),
        client,
        load,
        device_id=device_id,
        groups=ota.groups,
        failure_threshold=ota.failure_threshold,
        watch_studies=ota.watch_studies,
        report=report or (lambda _: None),
    )


def agent_running(data_dir: Path) -> bool:
    """True while an agent's :class:`OtaService` holds the agent lock of ``data_dir``."""
    from ota.slots import file_lock

    with file_lock(data_dir / "ota" / "agent.lock", wait=False) as free:
        return not free


class OtaService(BackgroundLoop):
    """Checks for and installs model updates in the background."""

    name = "ota"

    def __init__(self, updater: OtaUpdater, *, check_interval_s: float) -> None:
        self._updater = updater
        self._interval = check_interval_s
        super().__init__()
        self._lock_file: IO[str] | None = None

    def notify(self, _payload: bytes = b"") -> None:
        """Check now (the relay announced a bundle)."""
        self._wake.set()

    def start(self) -> None:
        import fcntl

        self._updater.prepare()
        path = self._updater.store.root / "agent.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = path.open("a")
        fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self._updater.apply()
                event(log, "ota check", outcome=result.outcome, model=result.model_id, version=result.version)
            except (EdgeError, ModelError) as exc:
                event(log, "ota check failed", level=logging.WARNING, error=str(exc), kind=type(exc).__name__)
            except Exception:
                log.exception("ota check stopped by an unexpected error")
            self._wake.wait(self._interval)
            self._wake.clear()

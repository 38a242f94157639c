"""Logging a technician can read, and JSON lines when a log shipper asks.

Components log one line per event with :func:`event`::

    event(log, "stored", study="1.2.3", sop="1.2.3.4", calling_ae="UNIT1", bytes=8123456)

In ``text`` format that is ``2026-11-24T10:00:00Z INFO  ingest  stored study=1.2.3 sop=1.2.3.4 ...``; in ``json``
format one object per line with ``ts``, ``level``, ``logger``, ``event`` and the fields. With a log file the same
lines also go to that file, rotated by size (``[agent] log_file``, ``log_max_mb``, ``log_backups``).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any, Literal

__all__ = ["configure_logging", "event", "formatter"]

_FIELDS = "btt_fields"


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log the event ``name`` with its fields."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields}, stacklevel=2)


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


class _TextFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%SZ")
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        name = record.name.removeprefix("edge.")
        line = f"{ts} {record.levelname:<7} {name:<10} {record.getMessage()}"
        if fields:
            line += " " + " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def formatter(fmt: Literal["text", "json"] = "text") -> logging.Formatter:
    """The formatter of ``fmt`` lines."""
    return _JsonFormatter() if fmt == "json" else _TextFormatter()


def configure_logging(
    fmt: Literal["text", "json"] = "text",
    level: str = "INFO",
    *,
    log_file: Path | None = None,
    max_bytes: int = 20 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """Send all logs to standard error (and ``log_file``, rotated at ``max_bytes``) in ``fmt``; quiet the chattier
    libraries."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        )
    for handler in handlers:
        handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    for noisy in ("pynetdicom", "pydicom", "paho", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

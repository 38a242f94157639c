"""Logging a technician can read, and JSON lines when a log shipper asks.

Components log one line per event with :func:`event`::

    event(log, "stored", study="1.2.3", sop="1.2.3.4", calling_ae="UNIT1", bytes=8123456)

In ``text`` format that is ``2026-11-24T10:00:00Z INFO  ingest  stored study=1.2.3 sop=1.2.3.4 ...``; in ``json``
format one object per line with ``ts``, ``level``, ``logger``, ``event`` and the fields. With a log file the same
lines also go to that file, rotated by size (``[agent] log_file``, ``log_max_mb``, ``log_backups``).

Our own packages (:data:`OWN_LOGGERS`) log at ``level``; every other logger, that is every library's (highdicom,
pydicom, pynetdicom, PIL, paho, asyncio, onnxruntime...), at ``library_level`` (``[agent] log_third_party_level``,
WARNING unless asked), and never more verbosely than ``level``. The split is by namespace, not a list of chatty
libraries: a library the agent starts to use later is quiet too.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any, Literal

__all__ = ["OWN_LOGGERS", "configure_logging", "event", "formatter"]

_FIELDS = "btt_fields"

OWN_LOGGERS = ("edge", "firmware_bridge", "cloud_relay")
"""The namespaces of our packages' loggers; every other logger is a library's."""


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
    library_level: str = "WARNING",
    log_file: Path | None = None,
    max_bytes: int = 20 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """Send all logs to standard error (and ``log_file``, rotated at ``max_bytes``) in ``fmt``: our own loggers'
    records at ``level`` and above, the libraries' at ``library_level`` (or ``level``, whichever is quieter)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        )
    for handler in handlers:
        handler.setFormatter(formatter(fmt))
    ours = _level(level)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(max(ours, _level(library_level)))  # what every library logger inherits
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        # a library that set its own level when imported (pydicom: WARNING) follows the root like the others
        if isinstance(logger, logging.Logger) and name.partition(".")[0] not in OWN_LOGGERS:
            logger.setLevel(logging.NOTSET)


def _level(name: str) -> int:
    number = logging.getLevelName(name.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {name!r}")
    return number

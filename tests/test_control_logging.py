"""The agent's log: the file rotates at its size and keeps ``log_backups`` old files (``[agent] log_file``); the
agent writes to it when configured; libraries' loggers stay at WARNING (``[agent] log_third_party_level``) so
that building an image's results does not bury the agent's own lines under highdicom's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.control.logtail import LogTail
from edge.results.gsps import build_gsps
from edge.results.overlay import build_overlay
from edge.results.sr import build_sr
from edge.results.uids import UidFactory
from runtime.logs import configure_logging, event
from tests.conftest import StartAgent
from tests.results_helpers import analysis_of, source_image


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {n: lg.level for n, lg in root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.setLevel(loggers.get(name, logging.NOTSET))


@pytest.mark.usefixtures("restore_logging")
def test_log_file_rotates_and_keeps_a_bounded_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "agent.log"
    configure_logging("json", "INFO", log_file=path, max_bytes=2000, backups=2)
    log = logging.getLogger("edge.test")
    for i in range(200):
        event(log, "stored", n=i, pad="x" * 40)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    assert '"n": 199' in path.read_text()


@pytest.mark.integration
def test_the_agent_writes_its_log_file(start_agent: StartAgent, tmp_path: Path) -> None:
    log_file = tmp_path / "agent.log"
    agent = start_agent(tmp_path / "data", env={"BTT_EDGE_AGENT_LOG_FILE": str(log_file)})
    assert agent.terminate() == 0
    text = log_file.read_text()
    assert "agent ready" in text
    assert "control socket ready" in text


def _build_results(path: Path, level: str = "INFO", library_level: str = "WARNING") -> tuple[str, list[str]]:
    """Configure the agent's logging (file and the TUI's tail) at these levels, build the SR, overlay and GSPS of a
    generated radiograph (highdicom logs 7-16 INFO lines for each) and log one of our own events: the file's text
    and the tail's lines."""
    configure_logging("text", level, library_level=library_level, log_file=path)
    tail = LogTail(1000)
    logging.getLogger().addHandler(tail)
    try:
        source = source_image(rows=120, columns=240)
        for build in (build_sr, build_overlay, build_gsps):
            build(source, analysis_of(source), UidFactory())
        event(logging.getLogger("edge.results"), "built", study=source.StudyInstanceUID)
    finally:
        logging.getLogger().removeHandler(tail)
        for handler in logging.getLogger().handlers:
            handler.close()  # the next configure_logging replaces them
    return path.read_text(), [line for _, line in tail.read()["lines"]]


@pytest.mark.usefixtures("restore_logging")
def test_building_results_leaves_no_library_info_in_the_agent_log(tmp_path: Path) -> None:
    text, tail = _build_results(tmp_path / "agent.log")
    assert "results    built study=" in text  # our own INFO line is there
    assert "highdicom" not in text
    assert [line for line in tail if "built study=" not in line] == []  # the TUI's log view: ours only
    assert logging.getLogger("edge.results").isEnabledFor(logging.INFO)
    for library in ("highdicom", "pydicom", "pynetdicom", "PIL", "paho", "asyncio", "onnxruntime"):
        assert not logging.getLogger(library).isEnabledFor(logging.INFO), library
        assert logging.getLogger(library).isEnabledFor(logging.WARNING), library


@pytest.mark.usefixtures("restore_logging")
def test_libraries_log_more_only_when_asked_and_never_more_than_ours(tmp_path: Path) -> None:
    text, _ = _build_results(tmp_path / "asked.log", level="DEBUG", library_level="INFO")
    assert 'INFO    highdicom.base copy attributes of module "Patient"' in text
    assert not logging.getLogger("pydicom").isEnabledFor(logging.DEBUG)  # INFO asked, not DEBUG
    configure_logging("text", "DEBUG", library_level="DEBUG")
    assert logging.getLogger("pydicom").isEnabledFor(logging.DEBUG)  # though pydicom set WARNING on import
    text, _ = _build_results(tmp_path / "clamped.log", level="WARNING", library_level="INFO")
    assert text == ""  # libraries are never more verbose than the agent's own log_level
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("text", library_level="LOUD")

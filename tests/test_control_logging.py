"""Log rotation (``[agent] log_file``): the file rotates at its size and keeps ``log_backups`` old files; the agent
writes to it when configured."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.logs import configure_logging, event
from tests.conftest import StartAgent


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


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

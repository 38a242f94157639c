"""The relay deployment as packaged: the worker unit's migration step (its ExecStartPre, run as three workers
starting at once would run it) against a real PostgreSQL, and the environment files the template unit reads."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from cloud_relay.storage.schema import MIGRATIONS
from tests.relay_helpers import throwaway_url

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "packaging/systemd/btt-relay@.service"
RELAY = REPO / ".venv/bin/btt-relay"


def _directive(name: str) -> str:
    text = UNIT.read_text().replace("\\\n", " ")
    match = re.search(rf"^{name}=(.*)$", text, re.M)
    assert match is not None, name
    return match.group(1)


def _environment(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.mark.integration
@pytest.mark.slow
def test_workers_starting_together_migrate_once(tmp_path: Path) -> None:
    command = _directive("ExecStartPre").split()
    assert command[0] == "/opt/btt-relay/venv/bin/btt-relay"
    with throwaway_url("postgresql", tmp_path) as url:
        env = {**os.environ, "BTT_RELAY_DB": url}
        workers = [
            subprocess.Popen([str(RELAY), *command[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(3)
        ]
        for worker in workers:
            _, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err.decode()
        with psycopg.connect(url) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM relay_schema ORDER BY version")]
            tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert {"receipts", "settlements", "devices", "rejects"} <= tables
        # An upgrade's restart runs it again: nothing to do, nothing breaks.
        again = subprocess.run([str(RELAY), *command[1:]], env=env, capture_output=True, timeout=120, check=False)
        assert again.returncode == 0, again.stderr


def test_unit_and_environment_files_agree() -> None:
    shared = _environment(REPO / "packaging/relay/relay.env")
    worker = _environment(REPO / "packaging/relay/relay-1.env")
    assert set(shared) == {"BTT_RELAY_DB", "BTT_RELAY_ARGS"}
    assert set(worker) == {"BTT_RELAY_WORKER_ARGS"}
    start = _directive("ExecStart")
    assert "$BTT_RELAY_ARGS $BTT_RELAY_WORKER_ARGS" in start
    assert "--client-id btt-relay-%i" in start
    # The command line systemd builds for worker 1 is one btt-relay accepts.
    argv = [*start.split()[1:], *shared["BTT_RELAY_ARGS"].split(), *worker["BTT_RELAY_WORKER_ARGS"].split()]
    argv = [a.replace("%i", "1") for a in argv if not a.startswith("$")]
    from cloud_relay.cli import _parser

    args = _parser().parse_args(argv)
    assert args.client_id == "btt-relay-1"
    assert args.http_port == 8080
    assert args.mqtt.startswith("mqtts://")
    assert shared["BTT_RELAY_DB"].startswith("postgresql://")

"""The control socket: protocol, server and client over a real Unix socket, audit log, log tail, the agent's views.

The last tests run the real agent (``btt-edge run``), send it an image with DCMTK's ``storescu`` and look at it
only through the socket, as the terminal UI does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import AgentConfig, with_overrides
from edge.control import AgentState, ControlClient, ControlServer
from edge.control.logtail import LogTail
from edge.control.protocol import MAX_LINE_BYTES, Request, Response, decode_request, decode_response, encode
from edge.db import DB_FILENAME, connect
from edge.errors import ControlError
from edge.outbox import Outbox
from edge.store.index import migrate_index
from tests.conftest import Dcmtk, StartAgent, free_port, wait_until
from tests.results_helpers import source_image, storescp


def _config(data_dir: Path, **sections: dict[str, object]) -> AgentConfig:
    return with_overrides(AgentConfig(), agent={"data_dir": str(data_dir)}, **sections)


@contextlib.contextmanager
def _serving(config: AgentConfig) -> Iterator[ControlServer]:
    """A started control server for ``config`` (stopped on the way out)."""
    server = ControlServer(config.control, AgentState(config))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ControlServer]:
    """A control server on a fresh data directory (index and outbox tables, no other component)."""
    data = tmp_path / "data"
    config = _config(data)
    conn = connect(data / DB_FILENAME)
    migrate_index(conn)
    Outbox.migrate(conn)
    conn.close()
    with _serving(config) as server:
        yield server


# --- protocol (pure) ------------------------------------------------------------------------------------------


def test_protocol_round_trip() -> None:
    req = Request(3, "studies", {"limit": 5})
    assert decode_request(encode(req)) == req
    ok, err = Response(3, True, [1, 2]), Response(4, False, error="no")
    assert decode_response(encode(ok)) == ok
    assert decode_response(encode(err)) == err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not a JSON line"),
        (b"[1]\n", "must be a JSON object"),
        (b'{"method": "x"}\n', "integer 'id'"),
        (b'{"id": true, "method": "x"}\n', "integer 'id'"),
        (b'{"id": 1}\n', "'method' string"),
        (b'{"id": 1, "method": "x", "params": [1]}\n', "'params' must be an object"),
        (b'{"id": 1, "method": "x"' + b" " * MAX_LINE_BYTES + b"}\n", "exceeds"),
    ],
)
def test_protocol_rejects_bad_lines(line: bytes, message: str) -> None:
    with pytest.raises(ControlError, match=message):
        decode_request(line)


# --- server and client ----------------------------------------------------------------------------------------


def test_socket_is_permissioned_and_answers(served: ControlServer) -> None:
    assert stat.S_IMODE(served.path.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(served.path.stat().st_mode)
    with ControlClient(served.path) as client:
        assert client.call("ping")["pid"] == os.getpid()
        overview = client.call("overview")
        assert overview["dicom"]["port"] == 11112
        assert overview["relay"] == {
            "configured": False,
            "connected": None,
            "outbox": {"pending": {}, "rejected": 0},
            "outbox_depth": 0,
        }
        assert client.call("studies") == []
        assert client.call("capacity")["available"] is False
        assert client.call("receipts")["balances"] == []


def test_owner_only_socket(tmp_path: Path) -> None:
    config = _config(tmp_path / "d", control={"group_access": False})
    (tmp_path / "d").mkdir()
    connect(tmp_path / "d" / DB_FILENAME).close()
    with _serving(config) as server:
        assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    assert not server.path.exists()


def test_errors_reach_the_client_and_the_connection_survives(served: ControlServer) -> None:
    with ControlClient(served.path) as client:
        with pytest.raises(ControlError, match="unknown method 'nope'"):
            client.call("nope")
        with pytest.raises(ControlError, match="bad parameters for study"):
            client.call("study")
        with pytest.raises(ControlError, match=r"no study '1\.2\.3' on this box"):
            client.call("study", study_uid="1.2.3")
        assert client.call("ping")["version"]


def test_garbage_on_the_socket_gets_an_error_line(served: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(served.path))
        sock.sendall(b"hello\n")
        answer = json.loads(sock.makefile("rb").readline())
    assert answer["ok"] is False
    assert "not a JSON line" in answer["error"]


def test_actions_are_audited_with_the_peers_uid(served: ControlServer) -> None:
    with ControlClient(served.path) as client:
        assert client.call("outbox.requeue") == {"requeued": 0}
        with pytest.raises(ControlError, match="has not run on this agent"):
            client.call("capacity.set", enabled=True)
        with pytest.raises(ControlError, match="results delivery is not enabled"):
            client.call("results.resend", study_uid="1.2.3")
        entries = client.call("audit")
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("results.resend", "refused"),
        ("capacity.set", "refused"),
        ("outbox.requeue", "ok"),
    ]
    assert {e["uid"] for e in entries} == {os.getuid()}
    assert {e["pid"] for e in entries} == {os.getpid()}
    assert entries[1]["params"] == {"enabled": True}
    assert all(e["finished_at"] for e in entries)
    # durable: the audit log is a table in edge.db
    conn = connect(served.state.data_dir / DB_FILENAME, readonly=True)
    assert conn.execute("SELECT COUNT(*) FROM control_audit").fetchone()[0] == 3
    conn.close()


def test_capacity_switch_through_the_socket(served: ControlServer) -> None:
    from edge.capacity.state import migrate_capacity

    conn = connect(served.state.data_dir / DB_FILENAME)
    migrate_capacity(conn)
    conn.close()
    with ControlClient(served.path) as client:
        before = client.call("capacity")
        assert before["available"] is True
        assert before["enabled"] is False
        assert before["switch"] == "config"
        with pytest.raises(ControlError, match="'enabled' must be true or false"):
            client.call("capacity.set", enabled="yes")
        assert client.call("capacity.set", enabled=True) == {"enabled": True}
        after = client.call("capacity")
        assert after["enabled"] is True
        assert after["switch"] == "btt-edge capacity"
        assert [e["outcome"] for e in client.call("audit")] == ["ok", "refused"]


def test_uses_parked_without_an_identity_raise_an_alert(served: ControlServer) -> None:
    from edge.db import transaction
    from edge.receipts.book import ReceiptBook
    from protocol.receipts import Use

    conn = connect(served.state.data_dir / DB_FILENAME)
    ReceiptBook.migrate(conn)
    with transaction(conn):
        assert ReceiptBook(None).record(conn, Use(kind="analysis", study_uid="1.2.3")) is None
    conn.close()
    with ControlClient(served.path) as client:
        alerts = [a["text"] for a in client.call("health")["alerts"]]
        assert "1 use(s) parked without a receipt: btt-edge provision" in alerts
        assert client.call("receipts")["pending"] == 1


def test_requeue_makes_rejected_items_pending(served: ControlServer) -> None:
    conn = connect(served.state.data_dir / DB_FILENAME)
    outbox = Outbox.open(_config(served.state.data_dir))
    from edge.db import transaction
    from edge.outbox.outbox import Rejection

    with transaction(conn):
        outbox.enqueue(conn, "health", {"x": 1}, item="health:1")
    outbox.settle(conn, [], [Rejection("health:1", "bad", permanent=True)])
    assert Outbox.state(conn, "health:1") == "rejected"
    with ControlClient(served.path) as client:
        assert client.call("overview")["relay"]["outbox"]["rejected"] == 1
        assert any("rejected by the relay" in a["text"] for a in client.call("health")["alerts"])
        assert client.call("outbox.requeue", items=["health:1"]) == {"requeued": 1}
        with pytest.raises(ControlError, match="list of outbox item ids"):
            client.call("outbox.requeue", items="health:1")
    assert Outbox.state(conn, "health:1") == "pending"
    conn.close()


def test_a_second_server_on_the_same_socket_is_refused_and_a_stale_one_replaced(
    served: ControlServer, tmp_path: Path
) -> None:
    config = _config(served.state.data_dir)
    with pytest.raises(ControlError, match="another agent is serving"):
        ControlServer(config.control, AgentState(config)).start()
    # a socket file nobody answers on (an agent killed with -9) is replaced
    stale = tmp_path / "stale"
    stale.mkdir()
    connect(stale / DB_FILENAME).close()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale / "control.sock"))
    with _serving(_config(stale)) as server, ControlClient(server.path) as client:
        assert client.call("ping")


def test_long_socket_paths_work(tmp_path: Path) -> None:
    data = tmp_path / ("d" * 60) / ("e" * 60)
    data.mkdir(parents=True)
    connect(data / DB_FILENAME).close()
    config = _config(data)
    assert len(str(config.control.path(data))) > 108
    with _serving(config) as server, ControlClient(server.path) as client:
        assert client.call("ping")


def test_client_says_when_the_agent_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="the agent is not running"):
        ControlClient(tmp_path / "control.sock").call("ping")


def test_client_says_when_the_agent_goes_away(served: ControlServer) -> None:
    client = ControlClient(served.path)
    assert client.call("ping")
    served.stop()
    with pytest.raises(ControlError, match=r"closed the control connection|stopped answering|not running"):
        client.call("ping")
    client.close()
    served.start()  # for the fixture's stop


def test_log_tail_filters_by_text_and_level() -> None:
    tail = LogTail(3)
    log = logging.getLogger("edge.test")
    log.addHandler(tail)
    log.setLevel(logging.DEBUG)
    try:
        for i in range(4):
            log.info("line %d", i)
        log.warning("careful")
    finally:
        log.removeHandler(tail)
    doc = tail.read()
    assert [n for n, _ in doc["lines"]] == [3, 4, 5]  # only the last three are kept
    assert doc["last"] == 5
    assert [line.split()[-1] for _, line in tail.read(since=3)["lines"]] == ["3", "careful"]
    assert [line.split()[-1] for _, line in tail.read(level="warning")["lines"]] == ["careful"]
    assert [line.split()[-1] for _, line in tail.read(text="LINE 2")["lines"]] == ["2"]


# --- the real agent -------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_real_agent_through_its_socket(start_agent: StartAgent, dcmtk: Dcmtk, tmp_path: Path) -> None:
    data, pacs_dir, pacs_port = tmp_path / "data", tmp_path / "pacs", free_port()
    image = tmp_path / "pano.dcm"
    source = source_image("PX")
    source.save_as(image, enforce_file_format=True)
    uid = source.SOPInstanceUID
    with storescp(pacs_dir, pacs_port, unique=True):
        agent = start_agent(
            data,
            args=["--forward", f"PACS@127.0.0.1:{pacs_port}"],
            env={"BTT_EDGE_RECEIPTS_DEV_MODE": "true", "BTT_EDGE_PIPELINE_POLL_INTERVAL_S": "0.1"},
        )
        sent = dcmtk.run("storescu", "-aec", "BTT_EDGE", "127.0.0.1", str(agent.port), str(image), timeout=60)
        assert sent.returncode == 0, sent.stderr
        with ControlClient(data / "control.sock") as client:
            studies = wait_until(lambda: [s for s in client.call("studies") if s["state"] == "results sent"], 120)
            assert studies[0]["images"] == 1
            study = studies[0]["study_uid"]
            detail = client.call("study", study_uid=study)
            assert detail["images"][0]["sop_instance_uid"] == uid
            assert detail["images"][0]["analysis"]["backend"] == "onnxruntime-cpu"
            assert {(d["kind"], d["state"]) for d in detail["images"][0]["deliveries"]} == {
                ("sr", "sent"),
                ("overlay", "sent"),
            }
            assert detail["ai_label"].startswith("AI findings")
            overview = client.call("overview")
            assert overview["dicom"]["port"] == agent.port
            assert overview["pipeline"]["model"]["id"] == "btt-reference-dental-pano"
            assert overview["pipeline"]["backend"] == "onnxruntime-cpu"
            receipts = wait_until(lambda: client.call("receipts")["receipts"], 60)
            assert receipts[0]["kind"] == "analysis"
            logs = client.call("logs", text="stored")
            assert any(uid in line for _, line in logs["lines"])
            assert client.call("models")["ota"]["active_model"]["id"] == "btt-reference-dental-pano"
            # resend: the PACS (storescp, a file per copy received) gets the SR and the overlay again
            assert len(list(pacs_dir.iterdir())) == 2
            assert client.call("results.resend", study_uid=study) == {"deliveries": 2}
            wait_until(lambda: len(list(pacs_dir.iterdir())) == 4, 60)
            assert client.call("audit")[0]["action"] == "results.resend"
    # doctor sees the running agent through the same socket
    doctor = subprocess.run(
        [sys.executable, "-m", "edge", "doctor", "--data-dir", str(data), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BTT_EDGE_RECEIPTS_DEV_MODE": "true", "BTT_EDGE_DICOM_PORT": str(agent.port)},
        check=False,
    )
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["agent"]["status"] == "ok"
    assert "held by the running agent" in checks["dicom port"]["detail"]
    assert checks["device keys"]["status"] == "ok"
    assert doctor.returncode == 0, doctor.stdout
    assert agent.terminate() == 0
    assert not (data / "control.sock").exists()

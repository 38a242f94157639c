"""The control socket's bounds: connections and idle time.

Real server and the real client (what the terminal UI and ``btt-edge doctor`` use) over a real Unix socket. Idle
clients past ``max_connections`` cost no thread and never keep the client out (the one idle longest makes room);
a connection idle past ``idle_timeout_s`` is closed, even one that trickles bytes; a kept client reconnects after
its connection was closed; every connection busy: a new one is told so; an over-long request line is refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from edge.config import AgentConfig, with_overrides
from edge.control import AgentState, ControlClient, ControlServer
from edge.control.protocol import MAX_REQUEST_BYTES, Request, Response
from edge.db import DB_FILENAME, connect
from edge.errors import ControlError

Serve = Callable[..., ControlServer]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start a control server on a fresh data directory with ``[control]`` overrides; stopped at the end."""
    servers: list[ControlServer] = []

    def start(**control: object) -> ControlServer:
        data = tmp_path / f"data{len(servers)}"
        data.mkdir()
        connect(data / DB_FILENAME).close()
        config = with_overrides(AgentConfig(), agent={"data_dir": str(data)}, control=control)
        server = ControlServer(config.control, AgentState(config))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def raw(server: ControlServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.path))
    sock.settimeout(5)
    return sock


def closed_by_server(sock: socket.socket, wait_s: float = 0.0) -> bool:
    sock.settimeout(wait_s or 0.001)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_clients_past_the_limit_cost_no_thread_and_never_keep_the_client_out(serve: Serve) -> None:
    server = serve()  # the defaults: 32 connections, 30 s idle
    limit = server.config.max_connections
    with ControlClient(server.path) as client:
        assert client.call("ping")
    threads = threading.active_count()
    with ExitStack() as stack:
        idle = []
        for i in range(5 * limit):
            idle.append(stack.enter_context(raw(server)))
            if i % 3 == 0:
                idle[-1].sendall(b'{"id": 1, "meth')  # half a request, never finished
        with ControlClient(server.path) as client:
            assert client.call("ping")["pid"]
            assert client.call("overview")
        assert threading.active_count() <= threads  # before: one thread per connection
        time.sleep(0.1)
        still_open = [s for s in idle if not closed_by_server(s)]
        assert len(still_open) < limit  # the client got in: the longest idle made room
        assert set(still_open) <= set(idle[-limit:])  # and the oldest went first


def test_a_connection_without_a_request_is_closed_after_the_idle_timeout(serve: Serve) -> None:
    server = serve(idle_timeout_s=1)
    with raw(server) as silent, raw(server) as trickling, raw(server) as talking:
        started, closed_after = time.monotonic(), 0.0
        while not closed_after and time.monotonic() - started < 3:
            try:
                trickling.sendall(b" ")  # a byte now and then, never a line: still idle
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
            talking.sendall(json.dumps(Request(1, "ping").to_json()).encode() + b"\n")
            assert json.loads(talking.makefile("rb").readline())["ok"]
            time.sleep(0.1)
        assert 1 <= closed_after < 2
        assert closed_by_server(silent)
        assert not closed_by_server(talking)  # a request every 0.1 s: never idle


def test_a_kept_client_reconnects_when_its_connection_was_closed(serve: Serve) -> None:
    server = serve(idle_timeout_s=1, max_connections=4)
    with ControlClient(server.path) as client:
        assert client.call("ping")
        time.sleep(1.6)  # closed for idleness
        assert client.call("ping")
        with ExitStack() as stack:
            for _ in range(4):
                stack.enter_context(raw(server))  # the client's connection, the oldest idle, makes room
            time.sleep(0.1)
            assert client.call("ping")


def test_when_every_connection_is_busy_a_new_one_is_told(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(max_connections=2)
    release = threading.Event()
    handle = server.handle

    def slow(request: Request, peer: tuple[int | None, int | None]) -> Response:
        if request.method == "ping":
            release.wait(10)
        return handle(request, peer)

    monkeypatch.setattr(server, "handle", slow)
    busy = [ControlClient(server.path), ControlClient(server.path)]
    callers = [threading.Thread(target=c.call, args=("ping",)) for c in busy]
    for caller in callers:
        caller.start()
    time.sleep(0.3)
    try:
        with ControlClient(server.path) as refused, pytest.raises(ControlError, match="all 2 control connections"):
            refused.call("overview")
    finally:
        release.set()
        for caller in callers:
            caller.join()
        for client in busy:
            client.close()
    with ControlClient(server.path) as client:
        assert client.call("overview")


def test_an_over_long_request_line_is_refused_and_closed(serve: Serve) -> None:
    server = serve()
    with raw(server) as sock:
        sock.sendall(b"x" * (MAX_REQUEST_BYTES + 10))
        answer = json.loads(sock.makefile("rb").readline())
        assert answer["ok"] is False
        assert f"longer than {MAX_REQUEST_BYTES}" in answer["error"]
        assert closed_by_server(sock, 1.0)

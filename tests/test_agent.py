"""The composition root's run loop: services start in order, stop in reverse, and signals stop it promptly."""

from __future__ import annotations

import faulthandler
import signal
import threading
import time

import pytest

from edge.agent import Agent
from edge.config import AgentConfig


class _ThreadedService:
    """A service with a thread of its own, like every real one."""

    name = "threaded"

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.ident = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.ident = threading.get_ident()
        self.ready.set()
        self._stop.wait()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_sigterm_delivered_to_a_service_thread_stops_the_agent() -> None:
    service = _ThreadedService()
    agent = Agent(AgentConfig(), [service])

    def terminate_from_the_service_thread() -> None:
        service.ready.wait(10)
        time.sleep(0.2)  # the main thread is waiting in Agent.run by now
        signal.pthread_kill(service.ident, signal.SIGTERM)

    killer = threading.Thread(target=terminate_from_the_service_thread, daemon=True)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        killer.start()
        started = time.monotonic()
        agent.run_until_signal()
        assert time.monotonic() - started < 5
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        faulthandler.unregister(signal.SIGUSR1)
    assert not service._thread.is_alive()


class _SlowToStop:
    name = "slow"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        time.sleep(0.5)


def test_a_service_slow_to_stop_gets_every_thread_stack_dumped(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("edge.agent._SLOW_STOP_S", 0.1)
    agent = Agent(AgentConfig(), [_SlowToStop()])
    agent.shutdown()
    agent.run()
    err = capfd.readouterr().err
    assert "in stop" in err  # the stack shows where the service is stuck
    assert "Thread 0x" in err or "Current thread" in err

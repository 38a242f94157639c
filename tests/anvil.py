"""A real Ethereum node for tests and benchmarks: anvil (Foundry, from npm into ``.tools``) on a free loopback port.

::

    with Anvil() as node:            # returns once the node answers JSON-RPC
        w3 = Web3(Web3.HTTPProvider(node.url))
        key = ANVIL_KEYS[0]          # the first of anvil's funded development accounts
    node = Anvil(extra_args=("--block-time", "1")); node.start(); ...; node.kill()   # SIGKILL

anvil starts with its well-known development accounts (mnemonic "test test ... junk"), each funded with
10,000 ETH; :data:`ANVIL_KEYS` holds the first three private keys. A missing anvil fails with the command that
installs it (``scripts/setup``), never a skip.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.conftest import free_port, wait_until

__all__ = ["ANVIL", "ANVIL_KEYS", "Anvil"]

ANVIL = Path(__file__).resolve().parents[1] / ".tools" / "node_modules" / ".bin" / "anvil"

ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
)
"""Private keys of anvil's first three development accounts (public knowledge: never use them elsewhere)."""


class Anvil:
    """One anvil process on 127.0.0.1 and a free port (or ``port``), quiet, with ``extra_args`` appended."""

    def __init__(self, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port if port is not None else free_port()
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not ANVIL.exists():
            raise AssertionError(f"{ANVIL} is missing: run scripts/setup (it installs anvil from npm into .tools)")
        command = [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port), "--quiet", *self.extra_args]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - a file, not a pipe: nobody drains it while anvil runs; closed in _close
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._log)
        wait_until(self._answers, timeout=30, what=f"anvil on port {self.port}")

    def _answers(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            stderr = ""
            if self._log is not None:
                self._log.seek(0)
                stderr = self._log.read().decode(errors="replace")
            raise AssertionError(f"anvil exited with {self._process.returncode}: {stderr.strip()}")
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return "result" in json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def rpc(self, method: str, *params: object) -> object:
        """One JSON-RPC call; an error answer fails the test with it."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            doc = json.loads(response.read())
        if "error" in doc:
            raise AssertionError(f"{method}: {doc['error']}")
        return doc["result"]

    def mine(self, n: int = 1) -> None:
        """Mine ``n`` blocks now."""
        self.rpc("anvil_mine", hex(n))

    def stop(self) -> None:
        """Terminate anvil and wait for it (its chain is gone: anvil keeps it in memory)."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._close()

    def kill(self) -> None:
        """SIGKILL anvil."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
        self._process, self._log = None, None

    def __enter__(self) -> Anvil:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

"""The agent as the sync tests run it: ``btt-edge run --mqtt URL`` in a subprocess, tuned to sync quickly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from tests.conftest import free_port

FAST_SYNC_ENV = {
    "TCP_NODELAY": "1",
    "BTT_EDGE_SYNC_BATCH_MAX_ITEMS": "10",
    "BTT_EDGE_SYNC_MAX_INFLIGHT": "2",
    "BTT_EDGE_SYNC_BACKOFF_INITIAL_S": "0.1",
    "BTT_EDGE_SYNC_BACKOFF_MAX_S": "0.5",
    "BTT_EDGE_SYNC_ACK_TIMEOUT_S": "3",
    "BTT_EDGE_OUTBOX_FEED_INTERVAL_S": "0.1",
}
"""Small batches, two in flight, a short backoff and ack timeout, a quick outbox feed."""


def start_sync_agent(
    data_dir: Path, url: str, env: Mapping[str, str], stderr: int | IO[bytes] = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """``btt-edge run`` on ``data_dir`` publishing to the broker at ``url``, with ``env`` and :data:`FAST_SYNC_ENV`."""
    cmd = [sys.executable, "-m", "edge", "run", "--data-dir", str(data_dir), "--port", str(free_port()), "--mqtt", url]
    return subprocess.Popen(cmd, env={**env, **FAST_SYNC_ENV}, stdout=subprocess.DEVNULL, stderr=stderr)

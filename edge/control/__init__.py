"""The local control API: the agent's state and a technician's actions over a permissioned Unix socket.

``protocol`` (JSON lines, pure), ``state`` (the read-only views), ``actions`` (resend, requeue, OTA), ``audit``
(the durable log of technician actions), ``logtail`` (recent log lines for the live view), ``server`` (the
agent's :class:`ControlServer` service) and ``client`` (:class:`ControlClient`, used by ``btt-edge tui``,
``btt-edge doctor`` and health checks; nothing outside the agent reads its database behind its back).
"""

from edge.control.client import ControlClient
from edge.control.server import ControlServer
from edge.control.state import AgentState

__all__ = ["AgentState", "ControlClient", "ControlServer"]

"""The technician's terminal UI (``btt-edge tui``, Textual): the running agent seen through its control socket.

``app`` holds :class:`TechnicianApp` (tabs, refresh, confirmations, actions); one module per screen: ``overview``,
``studies``, ``unit``, ``receipts``, ``models``, ``capacity``, ``logs``; ``messages`` the messages views post up.
Data comes only from the control socket (:class:`edge.control.ControlClient`), fetched on worker threads that
reach the UI only through ``post_message``.
"""

from edge.tui.app import Source, TechnicianApp

__all__ = ["Source", "TechnicianApp"]

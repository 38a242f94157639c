"""The agent's side of the unit link: exposures as usage records, the unit's status and faults, image matching.

``exposures`` holds the tables (component ``unit`` of :mod:`edge.db`) and the pure matching rule; ``service``
runs a :mod:`firmware_bridge` driver from ``[unit]`` in the configuration and records what the unit reports;
``simulator`` is a virtual unit on a pty that speaks the bridge's protocol (``btt-edge simulate-unit``, the tests).
"""

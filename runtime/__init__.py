"""Process helpers every BTT program shares, none of them part of the wire contract.

``durable`` (atomic, fsync'd file writes and the data directory's modes), ``logs`` (one event per line, text or
JSON, and the split between our loggers and the libraries'), ``backoff`` (retry delays). The agent (``edge``),
the relay (``cloud_relay``), the OTA tools (``ota``), the serial bridge and the model tools use them. They import
nothing but the standard library, so the relay gets them without the agent. What crosses the wire is in
:mod:`protocol`, not here.
"""

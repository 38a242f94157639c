"""BTT Edge agent: DICOM in, AI on the box, results out, receipts, sync.

The data flow reads from the package names: ``ingest`` (storage SCP) -> ``store`` (files and index) ->
``pipeline`` (preprocess, infer, findings) -> ``results`` (SR, overlay, forwarding) -> ``receipts`` ->
``outbox`` -> ``sync``. ``agent`` wires them together from one :class:`~edge.config.AgentConfig`.
"""

__version__ = "0.1.0"

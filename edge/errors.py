"""Errors raised by the agent (`edge`).

Every error the agent raises on purpose derives from :class:`EdgeError`; errors from pydicom, pynetdicom,
sqlite3, onnxruntime, paho and PyNaCl are translated to one of these at the boundary that calls the library
(``raise StoreError(...) from exc``). The tree::

    EdgeError
    ├── ConfigError            a bad key or value in the configuration (names the key)
    ├── IngestError            the DICOM listener cannot run (``edge.ingest``: the port cannot be bound)
    ├── StoreError             the image store or its index could not do what was asked
    │   ├── OutOfSpace         below the free-space reserve: refuse rather than fill the disk
    │   ├── InvalidDataset     a dataset we must not store (no SOP Instance UID, unreadable, ...)
    │   ├── DuplicateConflict  same SOP Instance UID, different content, policy says reject
    │   └── StateConflict      a pipeline state change found the instance missing or in another state
    ├── PipelineError          preprocessing, inference or post-processing failed for one instance
    │   ├── UnsupportedImage   the model cannot read this image (recorded as "skipped" with the reason)
    │   └── BackendError       an inference backend failed to load or run; also a
    │                          :class:`models.errors.RunError`, so a golden-vector check records it as a failed case
    ├── ResultsError           clinical result objects and their delivery (``edge.results``; what a destination
    │                          does with an object is an outcome recorded in the queue, not an exception)
    │   └── ResultBuildError       a result object cannot be built from this image and these findings
    ├── ControlError           the local control socket (``edge.control``): the agent cannot be reached, or it
    │                          refused a technician's request (the message says why)
    ├── SyncError              the outbox or the link to the relay (``edge.outbox``, ``edge.sync``)
    │   ├── OutboxError            an item the outbox cannot take (unknown kind, not JSON, too large)
    │   ├── AckError               a malformed application acknowledgement from the relay (ignored, logged)
    │   └── LinkError              the broker cannot be reached or the connection dropped (paho errors, OSError)
    │       └── LinkRefused        the broker refused the connection (bad credentials, not authorised)
    ├── OtaError               over-the-air model updates; its own tree is drawn in ``ota/errors.py``
    ├── CapacityError          sharing spare capacity (``edge.capacity``)
    │   ├── JobRejected            a job outside the offer, badly signed, expired, or a blob whose hash differs
    │   └── JobFailed              an accepted job's worker failed, ran out of its limits or was killed
    └── ReceiptError           the receipt book and the device identity (``edge.receipts``); also a
        │                      :class:`protocol.errors.ProtocolError`, whose tree (encoding, key files, rights,
        │                      payouts, verification) is drawn in ``protocol/errors.py``: one
        │                      ``except ProtocolError`` catches every receipt failure, the agent's and the contract's
        └── IdentityError          the device key, salt or certificate is missing, unreadable or inconsistent

    ModelError                 the model tools (``models``); its tree is drawn in ``models/errors.py``
    └── BundleError            a model bundle is malformed, tampered with or incompatible (re-exported here:
                               one class, raised by ``models.bundle`` and by the agent about its bundles)

A :class:`BundleError` is not an :class:`EdgeError` (``models`` sits below the agent and does not import it): the
agent catches ``(EdgeError, ModelError)`` wherever a bundle is loaded, and the CLI maps both, and
:class:`~protocol.errors.ProtocolError`, to the same message and exit code.
"""

from __future__ import annotations

from models.errors import BundleError, ModelError, RunError
from protocol.errors import ProtocolError

__all__ = [
    "AckError",
    "BackendError",
    "BundleError",
    "CapacityError",
    "ConfigError",
    "ControlError",
    "DuplicateConflict",
    "EdgeError",
    "IdentityError",
    "IngestError",
    "InvalidDataset",
    "JobFailed",
    "JobRejected",
    "LinkError",
    "LinkRefused",
    "ModelError",
    "OutOfSpace",
    "OutboxError",
    "PipelineError",
    "ReceiptError",
    "ResultBuildError",
    "ResultsError",
    "StateConflict",
    "StoreError",
    "SyncError",
    "UnsupportedImage",
]


class EdgeError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeError):
    """A configuration key or value is wrong; the message names the key."""


class IngestError(EdgeError):
    """The DICOM listener cannot run."""


class StoreError(EdgeError):
    """The image store or its index failed."""


class OutOfSpace(StoreError):
    """Free space is below the configured reserve."""


class InvalidDataset(StoreError):
    """The dataset cannot be stored: it is unreadable or lacks a required identifier."""


class DuplicateConflict(StoreError):
    """An instance with this SOP Instance UID is stored already, with different content."""


class StateConflict(StoreError):
    """A pipeline state change expected another state (or the instance is not indexed)."""


class PipelineError(EdgeError):
    """Analysis of one instance failed."""


class UnsupportedImage(PipelineError):
    """The model cannot read this image; the instance is skipped with this reason."""


class BackendError(PipelineError, RunError):
    """An inference backend could not load or run a model."""


class CapacityError(EdgeError):
    """Sharing spare capacity failed."""


class JobRejected(CapacityError):
    """A job is not accepted: outside the offer, badly signed, expired, or a fetched blob does not match its hash."""


class JobFailed(CapacityError):
    """An accepted job's worker process failed, exceeded its limits, or was killed."""


class ControlError(EdgeError):
    """The agent's control socket cannot be reached, or the agent refused the request."""


class SyncError(EdgeError):
    """The outbox or the link to the relay failed."""


class OutboxError(SyncError):
    """An item the outbox cannot take: unknown kind, not JSON-serialisable, or too large."""


class AckError(SyncError):
    """An application acknowledgement from the relay that is not valid."""


class LinkError(SyncError):
    """The MQTT broker cannot be reached, or the connection dropped."""


class LinkRefused(LinkError):
    """The broker refused the connection (the reason code is in the message)."""


class ResultsError(EdgeError):
    """Building or delivering clinical result objects failed."""


class ResultBuildError(ResultsError):
    """A result object (SR, overlay) cannot be built from this image and these findings."""


class ReceiptError(EdgeError, ProtocolError):
    """The receipt book or the device identity failed (a :class:`~protocol.errors.ProtocolError` too)."""


class IdentityError(ReceiptError):
    """The device identity (key, salt, certificate) is missing, unreadable or inconsistent."""

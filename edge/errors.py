"""Errors raised by the agent (`edge`).

Every error the agent raises on purpose derives from :class:`EdgeError`; errors from pydicom, pynetdicom,
sqlite3, onnxruntime, paho and PyNaCl are translated to one of these at the boundary that calls the library
(``raise StoreError(...) from exc``). The tree::

    EdgeError
    ├── ConfigError            a bad key or value in the configuration (names the key)
    ├── StoreError             the image store or its index could not do what was asked
    │   ├── OutOfSpace         below the free-space reserve: refuse rather than fill the disk
    │   ├── InvalidDataset     a dataset we must not store (no SOP Instance UID, unreadable, ...)
    │   ├── DuplicateConflict  same SOP Instance UID, different content, policy says reject
    │   └── StateConflict      a pipeline state change found the instance missing or in another state
    ├── PipelineError          preprocessing, inference or post-processing failed for one instance
    │   ├── UnsupportedImage   the model cannot read this image (recorded as "skipped" with the reason)
    │   └── BackendError       an inference backend failed to load or run
    └── BundleError            a model bundle is malformed, tampered with or incompatible
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BundleError",
    "ConfigError",
    "DuplicateConflict",
    "EdgeError",
    "InvalidDataset",
    "OutOfSpace",
    "PipelineError",
    "StateConflict",
    "StoreError",
    "UnsupportedImage",
]


class EdgeError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeError):
    """A configuration key or value is wrong; the message names the key."""


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


class BackendError(PipelineError):
    """An inference backend could not load or run a model."""


class BundleError(EdgeError):
    """A model bundle is malformed, does not match its hashes, or needs another agent version."""

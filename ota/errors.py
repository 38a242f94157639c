"""Errors of over-the-air model updates (`ota`).

Every refusal names its reason with its own class, so a device log, ``btt-edge ota check`` and the report to the
relay say *which* protection fired. Errors of python-tuf, urllib and the bundle loader are translated to these at
one boundary each (:mod:`ota.client`, :mod:`ota.slots`, :mod:`ota.health`). The tree::

    OtaError (edge.errors.EdgeError)
    ├── RepositoryUnavailable   the repository cannot be reached or answered with an HTTP error (retried later)
    ├── UpdateRefused           the repository offered something this device must not install; one per attack:
    │   ├── UntrustedMetadata       metadata not signed by a threshold of the role's trusted keys (arbitrary
    │   │                           metadata, or a single compromised key below the threshold)
    │   ├── RollbackRefused         metadata older than what the device already trusts, or a bundle older than
    │   │                           the one it runs
    │   ├── FreezeRefused           metadata past its expiry (a repository or mirror replaying stale metadata)
    │   ├── MixAndMatchRefused      metadata that does not match the snapshot or timestamp that pins it
    │   ├── BundleTampered          a bundle whose length or hashes differ from the signed targets metadata, or
    │   │                           whose content is not the bundle the metadata names
    │   ├── OversizedDownload       more bytes than the signed length or the configured maximum (endless data)
    │   └── SlowRetrieval           a download not complete within its deadline (a mirror trickling bytes); what
    │                               arrived of a bundle is kept and the next check resumes it
    ├── HealthCheckFailed       the new bundle did not load or did not match its golden vectors on this device
    ├── InstallError            the local install cannot proceed (no previous model to roll back to, an update
    │                           under observation, a second installer running, a slot that cannot be written)
    └── PublishError            the manufacturer tool (``btt-ota``) cannot do what was asked: too few keys for a
                                role's threshold, no repository, a bundle that does not verify
"""

from __future__ import annotations

from edge.errors import EdgeError

__all__ = [
    "BundleTampered",
    "FreezeRefused",
    "HealthCheckFailed",
    "InstallError",
    "MixAndMatchRefused",
    "OtaError",
    "OversizedDownload",
    "PublishError",
    "RepositoryUnavailable",
    "RollbackRefused",
    "SlowRetrieval",
    "UntrustedMetadata",
    "UpdateRefused",
]


class OtaError(EdgeError):
    """Base of every error of the model updater."""


class RepositoryUnavailable(OtaError):
    """The update repository cannot be reached or answered with an HTTP error."""


class UpdateRefused(OtaError):
    """The repository offered metadata or a bundle that failed verification; nothing was installed."""

    reason = "refused"
    """A short, stable name of the protection that fired (reported to the relay)."""


class UntrustedMetadata(UpdateRefused):
    """Metadata not signed by a threshold of the keys the trusted root assigns to its role."""

    reason = "untrusted-metadata"


class RollbackRefused(UpdateRefused):
    """Metadata older than the trusted metadata, or a bundle older than the running one."""

    reason = "rollback"


class FreezeRefused(UpdateRefused):
    """Metadata past its expiry: the repository (or someone in between) serves stale metadata."""

    reason = "freeze"


class MixAndMatchRefused(UpdateRefused):
    """Metadata whose length or hashes differ from what the snapshot or timestamp pins."""

    reason = "mix-and-match"


class BundleTampered(UpdateRefused):
    """A downloaded bundle that is not the one the signed targets metadata describes."""

    reason = "bundle-tampered"


class OversizedDownload(UpdateRefused):
    """A download longer than its signed length or the configured maximum."""

    reason = "oversized"


class SlowRetrieval(UpdateRefused):
    """A download not complete within its deadline: ``[ota] timeout_s`` plus its length at ``min_download_rate``,
    at most ``max_download_s``."""

    reason = "slow-retrieval"


class HealthCheckFailed(OtaError):
    """The new bundle failed to load or to reproduce its golden vectors on this device's backend."""


class InstallError(OtaError):
    """The local install cannot proceed in the current state."""


class PublishError(OtaError):
    """The manufacturer tool cannot create, sign or publish what was asked."""

"""Errors raised by the cloud relay (`cloud_relay`).

Every error the relay raises on purpose derives from :class:`RelayError`. Errors from sqlite3, psycopg and
paho are translated where those libraries are called (``raise StorageUnavailable(...) from exc``);
verification failures stay :class:`protocol.errors.VerificationError` (the verifier's own tree) and become
:class:`Rejected` with the verifier's message as the reason. The tree::

    RelayError
    ├── RelayConfigError      a bad option or value (names it)
    ├── StorageError          the database refused what was asked
    │   └── StorageUnavailable    the database cannot be reached or failed mid-transaction (transient: retry)
    ├── RegistryError         an unknown or duplicate clinic, device or token in an admin command
    ├── Rejected              one up item that will never be stored (carries the reason; permanent)
    ├── NotYet                one up item that cannot be stored yet (its receipts are not here; transient)
    ├── Unauthorized          an API request without a valid clinic token
    ├── BrokerError           the MQTT broker refused the connection or the subscription
    └── WorkerFailed          a worker thread hit an error nothing handles: ``btt-relay run`` exits non-zero

Malformed input from devices is never raised: :mod:`cloud_relay.messages` refuses it with its reason.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "NotYet",
    "RegistryError",
    "Rejected",
    "RelayConfigError",
    "RelayError",
    "StorageError",
    "StorageUnavailable",
    "Unauthorized",
    "WorkerFailed",
]


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class RelayConfigError(RelayError):
    """An option or value is wrong; the message names it."""


class StorageError(RelayError):
    """The relay database refused an operation."""


class StorageUnavailable(StorageError):
    """The database is unreachable or failed mid-transaction; nothing was stored, try again later."""


class RegistryError(RelayError):
    """An admin command named an unknown or duplicate clinic, device or token."""


class Rejected(RelayError):
    """An up item the relay will never store; ``str(exc)`` is the reason sent back to the device."""


class NotYet(RelayError):
    """An up item that cannot be stored yet (e.g. a settlement before its receipts); it is not acked."""


class Unauthorized(RelayError):
    """An API request without a valid clinic token."""


class BrokerError(RelayError):
    """The MQTT broker refused the connection or the subscription."""


class WorkerFailed(RelayError):
    """A relay worker thread (the consumer, the capacity link) died of an unexpected error; the process ends."""

"""Errors raised by the model tools (`models`): bundles, golden vectors, the synthetic generator.

The agent catches them beside its own (``except (EdgeError, ModelError)``): :mod:`edge.errors` re-exports
:class:`BundleError`, so ``except BundleError`` is the same class everywhere, and its
:class:`~edge.errors.BackendError` is a :class:`RunError` too. The tree::

    ModelError
    ├── BundleError            a model bundle is malformed, tampered with or incompatible (names the reason)
    └── RunError               a network could not run (what :func:`models.golden.check_golden` records as a
                               failed case); the agent's inference backends raise it as ``edge.errors.BackendError``
"""

from __future__ import annotations

__all__ = ["BundleError", "ModelError", "RunError"]


class ModelError(Exception):
    """Base of every error the model tools raise on purpose."""


class BundleError(ModelError):
    """A model bundle is malformed, does not match its hashes, or needs another agent version."""


class RunError(ModelError):
    """A network could not run on a backend."""

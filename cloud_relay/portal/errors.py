"""Errors of the clinic portal (:mod:`cloud_relay.portal`); all are :class:`~cloud_relay.errors.RelayError`.

The routes turn them into answers in one place (:mod:`cloud_relay.portal.routes`)::

    RelayError
    └── PortalError
        ├── NotSignedIn     no session cookie, or its session expired or was signed out: 303 to the sign-in page
        ├── CsrfRefused     a POST without the page's CSRF token: 403
        └── NotFound        a device, receipt or page the signed-in clinic may not see (as if none existed): 404
"""

from __future__ import annotations

from cloud_relay.errors import RelayError

__all__ = ["CsrfRefused", "NotFound", "NotSignedIn", "PortalError"]


class PortalError(RelayError):
    """Base of the portal's errors."""


class NotSignedIn(PortalError):
    """The request has no live session."""


class CsrfRefused(PortalError):
    """A state-changing request without the CSRF token of its page."""


class NotFound(PortalError):
    """Nothing the signed-in principal may see has this name."""

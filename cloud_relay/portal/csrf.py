"""CSRF tokens: every POST carries the token of the page it came from (a form field or the htmx header).

Signed in, the token is the session's own (kept with it in ``portal_sessions``); signed out (the sign-in and
language forms), it is a random value in the ``btt_csrf`` cookie that the form repeats (double submit). Either
way a request from another site has neither: the session cookie is SameSite and HttpOnly, and the other site
cannot read the token.
"""

from __future__ import annotations

import hmac
import secrets

from cloud_relay.portal.errors import CsrfRefused

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "CSRF_HEADER", "check", "new_token"]

CSRF_COOKIE = "btt_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


def new_token() -> str:
    """A fresh random token."""
    return secrets.token_urlsafe(24)


def check(expected: str | None, given: str | None) -> None:
    """:class:`CsrfRefused` unless ``given`` is ``expected`` (compared in constant time)."""
    if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfRefused("the form's CSRF token is missing or wrong: reload the page and try again")

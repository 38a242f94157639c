"""The portal's settings: a frozen dataclass with bounded defaults, checked when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cloud_relay.errors import RelayConfigError

__all__ = ["PortalConfig"]


@dataclass(frozen=True)
class PortalConfig:
    """How the portal keeps sessions."""

    session_ttl_s: int = 8 * 3600
    """How long a session lasts after sign-in (absolute, not sliding), 60 s to 7 days."""
    same_site: Literal["lax", "strict"] = "lax"
    """The session cookie's SameSite (Lax: a link from elsewhere opens the portal signed in; POSTs never carry it)."""
    secure_cookies: bool | None = None
    """Mark cookies Secure: None = when the request came over TLS (directly or via uvicorn's proxy headers)."""

    def __post_init__(self) -> None:
        if isinstance(self.session_ttl_s, bool) or not 60 <= self.session_ttl_s <= 7 * 86_400:
            raise RelayConfigError(f"session_ttl_s must be 60 to {7 * 86_400} seconds, got {self.session_ttl_s!r}")
        if self.same_site not in ("lax", "strict"):
            raise RelayConfigError(f"same_site must be 'lax' or 'strict', got {self.same_site!r}")

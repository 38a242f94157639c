"""The clinic API's authentication: a route parameter ``clinic_id: Clinic`` is the clinic of the request's token.

Every route of the clinic API (:mod:`cloud_relay.api`, :mod:`cloud_relay.capacity.api`) needs
``Authorization: Bearer <clinic token>`` (``btt-relay token add``); a missing or unknown token is a 401. Both
routers take it from here, so neither imports the other for it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud_relay.errors import Unauthorized
from cloud_relay.registry import Registry

__all__ = ["Clinic"]

_bearer = HTTPBearer(auto_error=False, description="A clinic API token from `btt-relay token add`.")


def _clinic(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The clinic of the request's bearer token; 401 without a valid one."""
    if creds is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    registry: Registry = request.app.state.registry
    try:
        return registry.clinic_for_token(creds.credentials)
    except Unauthorized as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


Clinic = Annotated[str, Depends(_clinic)]

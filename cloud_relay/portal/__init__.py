"""The clinic portal: web pages for clinics, equipment owners and the operator, served by the relay's HTTP app.

:func:`mount_portal` adds it to the app :func:`cloud_relay.api.create_app` builds: the pages at ``/`` (the sign-in
page until signed in), the static files at ``/static``; the API stays under ``/v1`` unchanged. A clinic signs in
with its API token (``btt-relay token add CLINIC``) and sees what the API shows it, rendered; the operator signs in
with an admin token (``btt-relay token add --admin``) and sees every clinic. The pages read through the relay's own
functions (:class:`~cloud_relay.clinic.ClinicView`, :class:`~cloud_relay.ledger.Ledger`,
:class:`~cloud_relay.capacity.coordinator.Coordinator` and :mod:`cloud_relay.fleet`), the same functions the API
serves, so a page never shows what the API would not. The relay holds no patient data, so the portal shows no
studies and says so.

Modules: :mod:`~cloud_relay.portal.routes` (pages), :mod:`~cloud_relay.portal.sessions` (its ``portal_sessions``
table), :mod:`~cloud_relay.portal.csrf`, :mod:`~cloud_relay.portal.i18n` (``locales/en.json``,
``locales/zh-CN.json``), :mod:`~cloud_relay.portal.formatting`, :mod:`~cloud_relay.portal.chart` (the usage chart
as SVG), :mod:`~cloud_relay.portal.chain` (the on-chain hook), :mod:`~cloud_relay.portal.errors`; ``templates/``
(Jinja2) and ``static/`` (CSS, ``verify.js``: the in-browser inclusion-proof check, and htmx, vendored with its
licence).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.ledger import Ledger
from cloud_relay.portal.chain import ChainState, ChainView, describe, on_chain
from cloud_relay.portal.config import PortalConfig
from cloud_relay.portal.errors import PortalError
from cloud_relay.portal.routes import Portal
from cloud_relay.storage import Database
from protocol.clock import now_ms

__all__ = ["ChainState", "ChainView", "PortalConfig", "describe", "mount_portal", "on_chain"]

STATIC_DIR = Path(__file__).with_name("static")


def mount_portal(
    app: FastAPI,
    db: Database,
    ledger: Ledger,
    config: PortalConfig | None = None,
    *,
    coordinator: Coordinator | None = None,
    chain: ChainView | None = None,
    clock: Callable[[], int] = now_ms,
) -> None:
    """Serve the portal from ``app``: pages at ``/``, static files at ``/static`` (none in the OpenAPI document)."""
    portal = Portal(db, ledger, coordinator or Coordinator(db), config or PortalConfig(), chain=chain, clock=clock)
    app.include_router(portal.router)
    app.add_exception_handler(PortalError, portal.error)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="portal-static")

"""The portal's pages: thin handlers that call the relay's own functions and render one template each.

Every page but the sign-in page needs a session (:mod:`cloud_relay.portal.sessions`); without one a GET is sent to
``/`` (the sign-in page) and a POST is refused. Every POST checks the CSRF token (:mod:`cloud_relay.portal.csrf`).
A clinic sees only its own devices, as in the API: another clinic's device is a 404 like one that does not exist,
on every page and on the proof document. The operator (an admin token) sees every clinic.

Routes (none is in the OpenAPI document, which describes the API under ``/v1``)::

    GET  /                                        devices (signed in), else the sign-in page
    POST /sign-in   /sign-out   /language          session and language (CSRF)
    GET  /devices/{device}[?period=YYYY-MM]       usage chart, recent receipts with "verify", settlements
    GET  /devices/{device}/receipts/{seq}/proof.json   the proof document of the API (ClinicView.proof)
    GET  /money[?period=YYYY-MM&owner=O]          prepaid rights, charges per month, payouts, shares
    GET  /money/export?period=YYYY-MM&format=csv|json   the ledger statement (as the API's /v1/payouts)
    GET  /capacity                                offers, jobs, disputes, compute payouts
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

import jinja2
from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from cloud_relay import fleet
from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.clinic import ClinicView
from cloud_relay.errors import RegistryError, Unauthorized
from cloud_relay.ledger import PERIOD_PATTERN, Ledger, Statement, period_bounds
from cloud_relay.portal.chain import ChainView, describe, on_chain
from cloud_relay.portal.chart import usage_chart
from cloud_relay.portal.config import PortalConfig
from cloud_relay.portal.csrf import CSRF_COOKIE, CSRF_HEADER, check, new_token
from cloud_relay.portal.errors import CsrfRefused, NotFound, NotSignedIn
from cloud_relay.portal.formatting import Formatter
from cloud_relay.portal.i18n import LANG_COOKIE, LOCALES, Translator, negotiate
from cloud_relay.portal.sessions import SESSION_COOKIE, Session, SessionStore
from cloud_relay.registry import Registry
from cloud_relay.storage import Database
from protocol.encoding import MAX_SAFE_INTEGER
from protocol.topics import DEVICE_ID

__all__ = ["Portal"]

_TEMPLATES = FsPath(__file__).with_name("templates")
_RECENT = 20
_HISTORY_MONTHS = 6
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
DeviceParam = Annotated[str, Path(pattern=f"^{DEVICE_ID}$")]
PeriodParam = Annotated[str | None, Query(pattern=PERIOD_PATTERN)]


@dataclass
class Page:
    """One request as the templates see it: who, in which language, and the CSRF token for its forms."""

    request: Request
    session: Session | None
    t: Translator
    fmt: Formatter
    csrf: str
    new_csrf_cookie: bool

    @property
    def signed_in(self) -> Session:
        if self.session is None:
            raise NotSignedIn("sign in first")
        return self.session


@dataclass(frozen=True)
class Month:
    """One month's ledger statement, or why the ledger could not price it."""

    period: str
    statement: Statement | None
    error: str | None


def _month(ms: int) -> str:
    d = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=ms)
    return f"{d.year:04d}-{d.month:02d}"


def _hours(seconds: int) -> str:
    """A session length in hours for the sign-in page (``8``, ``0.5``)."""
    return str(seconds // 3600) if seconds % 3600 == 0 else f"{seconds / 3600:.1f}"


def _shift(period: str, months: int) -> str:
    index = int(period[:4]) * 12 + int(period[5:7]) - 1 + months
    year, month = divmod(index, 12)
    return f"{max(1970, min(9999, year)):04d}-{month + 1:02d}"


class Portal:
    """The portal's routes (:attr:`router`) and its error pages (:meth:`error`), over the relay's functions."""

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        coordinator: Coordinator,
        config: PortalConfig,
        *,
        chain: ChainView | None,
        clock: Callable[[], int],
    ) -> None:
        self.router, self._page, self._render = _routes(db, ledger, coordinator, config, chain=chain, clock=clock)

    def error(self, request: Request, exc: Exception) -> Response:
        """The answer to a :class:`~cloud_relay.portal.errors.PortalError` raised by a page."""
        p = self._page(request)
        if isinstance(exc, NotSignedIn):
            if request.method == "GET":
                return RedirectResponse("/", status_code=303)
            return self._render(p, "error.html", 401, message=p.t("error.signed_out"))
        if isinstance(exc, CsrfRefused):
            return self._render(p, "error.html", 403, message=p.t("error.csrf"))
        return self._render(p, "error.html", 404, message=p.t("error.not_found"))


_PageFn = Callable[[Request], Page]
_RenderFn = Callable[..., Response]


def _routes(
    db: Database,
    ledger: Ledger,
    coordinator: Coordinator,
    config: PortalConfig,
    *,
    chain: ChainView | None,
    clock: Callable[[], int],
) -> tuple[APIRouter, _PageFn, _RenderFn]:
    router = APIRouter(include_in_schema=False)
    registry = Registry(db)
    view = ClinicView(db)
    sessions = SessionStore(db, registry, config.session_ttl_s, clock)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.globals["days_in_month"] = lambda period: calendar.monthrange(int(period[:4]), int(period[5:7]))[1]

    def page(request: Request) -> Page:
        locale = negotiate(request.headers.get("accept-language"), request.cookies.get(LANG_COOKIE))
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        cookie = request.cookies.get(CSRF_COOKIE)
        csrf = session.csrf if session else cookie or new_token()
        return Page(request, session, Translator(locale), Formatter(locale), csrf, session is None and not cookie)

    def secure(request: Request) -> bool:
        return config.secure_cookies if config.secure_cookies is not None else request.url.scheme == "https"

    def finish(p: Page, response: Response) -> Response:
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        if p.new_csrf_cookie:
            response.set_cookie(
                CSRF_COOKIE, p.csrf, httponly=True, samesite=config.same_site, secure=secure(p.request), path="/"
            )
        return response

    def render(p: Page, template: str, code: int = 200, **values: Any) -> Response:
        html = env.get_template(template).render(
            page=p,
            t=p.t,
            fmt=p.fmt,
            principal=p.session.principal if p.session else None,
            chain=chain,
            session_hours=_hours(config.session_ttl_s),
            **values,
        )
        return finish(p, HTMLResponse(html, status_code=code))

    def posted(request: Request, p: Page, form_token: str | None) -> None:
        check(p.csrf if (p.session or not p.new_csrf_cookie) else None, form_token or request.headers.get(CSRF_HEADER))

    def clinic_of(p: Page, device: str) -> str:
        """The clinic whose device ``device`` is, if the signed-in principal may see it; else :class:`NotFound`."""
        principal = p.signed_in.principal
        if principal.clinic is not None:
            if registry.device_of_clinic(principal.clinic, device):
                return principal.clinic
        elif principal.operator:
            owner = next((d.clinic for d in registry.devices() if d.id == device), None)
            if owner is not None:
                return owner
        raise NotFound(f"no device {device}")

    # --- session and language ---------------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        p = page(request)
        if p.session is None:
            return render(p, "sign_in.html", error=None)
        statuses = fleet.device_status(db, p.session.principal.scope, clock())
        return render(p, "devices.html", devices=statuses, now=clock())

    @router.post("/sign-in")
    def sign_in(
        request: Request, token: Annotated[str, Form(max_length=256)] = "", csrf: Annotated[str, Form()] = ""
    ) -> Response:
        p = page(request)
        posted(request, p, csrf)
        try:
            session_id, _ = sessions.sign_in(token)
        except Unauthorized:
            return render(p, "sign_in.html", code=401, error=p.t("sign_in.refused"))
        response = finish(p, RedirectResponse("/", status_code=303))
        response.set_cookie(
            SESSION_COOKIE, session_id, max_age=config.session_ttl_s, httponly=True, samesite=config.same_site,
            secure=secure(request), path="/",
        )  # fmt: skip
        return response

    @router.post("/sign-out")
    def sign_out(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        p = page(request)
        _ = p.signed_in  # a POST without a session is refused (NotSignedIn), not silently accepted
        posted(request, p, csrf)
        sessions.sign_out(request.cookies.get(SESSION_COOKIE))
        response = finish(p, RedirectResponse("/", status_code=303))
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite=config.same_site, secure=secure(request)
        )
        return response

    @router.post("/language")
    def language(
        request: Request,
        lang: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
        next: Annotated[str, Form(max_length=512)] = "/",
    ) -> Response:
        p = page(request)
        posted(request, p, csrf)
        target = next if next.startswith("/") and not next.startswith("//") and "\\" not in next else "/"
        response = finish(p, RedirectResponse(target, status_code=303))
        if lang in LOCALES:
            response.set_cookie(
                LANG_COOKIE, lang, max_age=365 * 86_400, httponly=True, samesite="lax", secure=secure(request), path="/"
            )
        return response

    # --- devices ----------------------------------------------------------------------------------------------

    @router.get("/devices/{device}", response_class=HTMLResponse)
    def device_page(request: Request, device: DeviceParam, period: PeriodParam = None) -> Response:
        p = page(request)
        clinic = clinic_of(p, device)
        status = next(s for s in fleet.device_status(db, clinic, clock()) if s.device == device)
        recent = view.receipts(clinic, device, max(0, status.last_seq - _RECENT), _RECENT)["receipts"][::-1]
        if period is None:
            period = _month(recent[0]["envelope"]["signed"]["time_ms"] if recent else clock())
        start, end = period_bounds(period)
        days = fleet.daily_usage(db, clinic, device, start, end)
        settlements = view.settlements(clinic, device)["settlements"][::-1]
        return render(
            p, "device.html", status=status, receipts=recent, settlements=settlements, period=period,
            chart=usage_chart(days, start, end), days=days, prev_period=_shift(period, -1),
            next_period=_shift(period, 1),
        )  # fmt: skip

    @router.get("/devices/{device}/receipts/{seq}/proof.json")
    def proof(request: Request, device: DeviceParam, seq: Annotated[int, Path(ge=1, le=MAX_SAFE_INTEGER)]) -> Response:
        p = page(request)
        try:
            doc = view.proof(clinic_of(p, device), device, seq)
        except RegistryError as exc:
            raise NotFound(str(exc)) from exc
        return finish(p, JSONResponse(doc))

    # --- rights and money -------------------------------------------------------------------------------------

    def month(period: str, scope: str | None) -> Month:
        try:
            return Month(period, ledger.statement(period, scope), None)
        except RegistryError as exc:  # e.g. an asset without a share table: the ledger cannot price the month
            return Month(period, None, str(exc))

    def history(scope: str | None, last: str) -> list[Month]:
        return [month(_shift(last, -i), scope) for i in range(_HISTORY_MONTHS)]

    @router.get("/money", response_class=HTMLResponse)
    def money(
        request: Request,
        period: PeriodParam = None,
        owner: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Response:
        p = page(request)
        scope = p.signed_in.principal.scope
        if period is None:
            recent = history(scope, _month(clock()))
            period = next((m.period for m in recent if m.statement and m.statement.receipts), recent[0].period)
        statements = history(scope, period)
        tables = fleet.share_tables(db, scope)
        return render(
            p, "money.html", period=period, selected=statements[0], statements=statements,
            balances=fleet.balances(db, scope), tables=fleet.assets(tables, owner) if owner else tables,
            owner=owner or None, on_chain=lambda kind, ref: describe(p.t, on_chain(chain, kind, ref)),
            prev_period=_shift(period, -1), next_period=_shift(period, 1),
        )  # fmt: skip

    @router.get("/money/export")
    def export(
        request: Request,
        period: Annotated[str, Query(pattern=PERIOD_PATTERN)],
        format: Annotated[Literal["csv", "json"], Query()] = "csv",
    ) -> Response:
        p = page(request)
        try:
            statement = ledger.statement(period, p.signed_in.principal.scope)
        except RegistryError as exc:
            return finish(p, PlainTextResponse(str(exc), status_code=422))
        name = f"btt-ledger-{period}.{format}"
        body = statement.to_csv() if format == "csv" else statement.to_json_text()
        response = PlainTextResponse(body, media_type="text/csv" if format == "csv" else "application/json")
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return finish(p, response)

    # --- capacity ---------------------------------------------------------------------------------------------

    @router.get("/capacity", response_class=HTMLResponse)
    def capacity(request: Request) -> Response:
        p = page(request)
        principal = p.signed_in.principal
        if principal.clinic is not None:
            offers = coordinator.market(principal.clinic)
        else:
            offers = [
                {"device": o["device"], "offer_id": o["offer_id"], "kind": o["accelerator"]["kind"],
                 "memory_mb": o["accelerator"]["memory_mb"], "score_mflops": o["score_mflops"],
                 "max_items": o["max_items"], "price_per_item_micro": o["price_per_item_micro"],
                 "expires_ms": o["expires_ms"]}
                for o in coordinator.offers()
            ]  # fmt: skip
        jobs = coordinator.jobs(principal.scope)
        return render(
            p, "capacity.html", offers=offers, jobs=jobs, disputes=[j for j in jobs if j["state"] == "disputed"],
            payouts=coordinator.payouts(None, principal.scope),
        )  # fmt: skip

    return router, page, render

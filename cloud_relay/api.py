"""The clinic HTTP API (FastAPI; the OpenAPI document is served at ``/openapi.json``, docs at ``/docs``).

Every route needs ``Authorization: Bearer <clinic token>`` (``btt-relay token add``) and answers for that
clinic's devices only; another clinic's device is a 404 like a device that does not exist. The handlers are
thin: each calls one :class:`~cloud_relay.clinic.ClinicView` or :class:`~cloud_relay.ledger.Ledger` method
and maps :class:`RegistryError` to 404 (unknown device) or 422 (bad period).

Every parameter is validated before a handler runs, and declared in the OpenAPI document with its bounds: a
device id of :data:`~protocol.topics.DEVICE_ID`'s form, sequence numbers from 0 (``after_seq``) or 1 (``seq``)
to 2**53 - 1 (the receipts' integer range), a period ``YYYY-MM`` from 1970-01 to 9999-12; anything else is a 422
naming the parameter and why (FastAPI's validation error), never a 500. The suite runs schemathesis against this
document (tests/test_relay_api_fuzz.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import PlainTextResponse

from cloud_relay.auth import Clinic
from cloud_relay.capacity.api import capacity_router
from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.clinic import ClinicView
from cloud_relay.errors import RegistryError, StorageUnavailable
from cloud_relay.ledger import PERIOD_PATTERN, Ledger
from cloud_relay.portal import ChainView, mount_portal
from cloud_relay.registry import Registry
from cloud_relay.storage import Database
from protocol.clock import now_ms
from protocol.encoding import MAX_SAFE_INTEGER
from protocol.topics import DEVICE_ID

__all__ = ["DeviceId", "create_app"]

DeviceId = Annotated[str, Path(pattern=f"^{DEVICE_ID}$", description="A device id")]
_PERIOD = Query(pattern=PERIOD_PATTERN, description="UTC calendar month, YYYY-MM (1970-01 to 9999-12)")


def create_app(
    db: Database, ledger: Ledger, *, clock: Callable[[], int] = now_ms, chain: ChainView | None = None
) -> FastAPI:
    """The API over ``db``; ``clock`` (ms) dates the status's window of rejected messages; ``chain`` (the chain
    ledger's view, ``btt-relay run --chain``) fills the portal's "On chain" column."""
    app = FastAPI(
        title="BTT Edge cloud relay: clinic API",
        version="1",
        description="Devices, usage, receipts with inclusion proofs, settlements, payouts and capacity of one clinic.",
    )
    app.state.registry = Registry(db)
    view = ClinicView(db)

    def not_found(exc: RegistryError) -> HTTPException:
        return HTTPException(404, str(exc))

    @app.exception_handler(StorageUnavailable)
    def storage_down(request: Any, exc: StorageUnavailable) -> PlainTextResponse:
        return PlainTextResponse(f"storage unavailable: {exc}", status_code=503)

    @app.get("/v1/devices", summary="The clinic's devices")
    def devices(clinic_id: Clinic) -> dict[str, Any]:
        return {"devices": view.devices(clinic_id)}

    @app.get("/v1/status", summary="Each device's last contact, link, active model, outbox lag and alerts")
    def status(clinic_id: Clinic) -> dict[str, Any]:
        return view.status(clinic_id, clock())

    @app.get("/v1/rights", summary="The clinic's prepaid service rights with the units used of each")
    def rights(clinic_id: Clinic) -> dict[str, Any]:
        return view.rights(clinic_id)

    @app.get("/v1/shares", summary="The share tables of the assets the clinic's devices are")
    def shares(clinic_id: Clinic) -> dict[str, Any]:
        return view.shares(clinic_id)

    @app.get("/v1/usage", summary="Receipts and units per device and service kind in a month")
    def usage(clinic_id: Clinic, period: Annotated[str, _PERIOD]) -> dict[str, Any]:
        try:
            return view.usage(clinic_id, period)
        except RegistryError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.get("/v1/devices/{device}/usage/daily", summary="A device's receipts and units per day and kind in a month")
    def daily_usage(clinic_id: Clinic, device: DeviceId, period: Annotated[str, _PERIOD]) -> dict[str, Any]:
        try:  # the period is valid here (its pattern is checked first): the error is an unknown device
            return view.daily_usage(clinic_id, device, period)
        except RegistryError as exc:
            raise not_found(exc) from exc

    @app.get("/v1/devices/{device}/receipts", summary="A device's receipts with their inclusion proofs")
    def receipts(
        clinic_id: Clinic,
        device: DeviceId,
        after_seq: Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        try:
            return view.receipts(clinic_id, device, after_seq, limit)
        except RegistryError as exc:
            raise not_found(exc) from exc

    @app.get(
        "/v1/devices/{device}/receipts/{seq}/proof",
        summary="A stand-alone inclusion proof of one settled receipt (checked by `btt-edge receipts verify-proof`)",
    )
    def proof(
        clinic_id: Clinic, device: DeviceId, seq: Annotated[int, Path(ge=1, le=MAX_SAFE_INTEGER)]
    ) -> dict[str, Any]:
        try:
            return view.proof(clinic_id, device, seq)
        except RegistryError as exc:
            raise not_found(exc) from exc

    @app.get("/v1/devices/{device}/settlements", summary="A device's verified settlements")
    def settlements(clinic_id: Clinic, device: DeviceId) -> dict[str, Any]:
        try:
            return view.settlements(clinic_id, device)
        except RegistryError as exc:
            raise not_found(exc) from exc

    @app.get(
        "/v1/payouts",
        summary="Charges and owner payouts on the clinic's devices in a month (JSON or CSV)",
        response_model=None,
    )
    def payouts(
        clinic_id: Clinic,
        period: Annotated[str, _PERIOD],
        format: Annotated[Literal["json", "csv"], Query()] = "json",
    ) -> dict[str, Any] | PlainTextResponse:
        try:
            statement = ledger.statement(period, clinic_id)
        except RegistryError as exc:
            raise HTTPException(422, str(exc)) from exc
        if format == "csv":
            return PlainTextResponse(statement.to_csv(), media_type="text/csv")
        return statement.to_json()

    @app.get("/v1/capacity", summary="The latest capacity offer of each of the clinic's devices")
    def capacity(clinic_id: Clinic) -> dict[str, Any]:
        return view.capacity(clinic_id)

    # Spare-capacity jobs (cloud_relay.capacity): submit a batch job, collect its results, offers, payouts.
    app.include_router(capacity_router(Coordinator(db)))
    # The clinic portal (cloud_relay.portal): web pages at / over the same functions; the API above is unchanged.
    mount_portal(app, db, ledger, clock=clock, chain=chain)
    return app

"""The capacity routes of the relay's HTTP API: submit a batch job, collect its results, see offers and payouts.

Included in the clinic API by :func:`cloud_relay.api.create_app`. Every route needs the clinic's bearer token except
``GET /v1/capacity/blobs/{sha256}``, which devices use to fetch a job's bundle and batch by hash (both are checked
against the hash the signed job names; by the capacity contract they hold models and synthetic or de-identified
inputs, never patient data).

What a clinic sees: its own jobs (an assignment to another clinic's device names no device), payouts to its own
devices only (``?device=`` another clinic's device is a 404, like an unknown one), and the live offers of the whole
network as terms (kind, memory, score, items, price, expiry) with the device and offer id only of its own devices
(:meth:`~cloud_relay.capacity.coordinator.Coordinator.market`). A blob is reachable by anyone who knows its hash.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from cloud_relay.auth import Clinic
from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.capacity.market import Requirements
from cloud_relay.errors import RegistryError
from protocol.encoding import MAX_SAFE_INTEGER
from protocol.records import KIND_RE
from protocol.topics import DEVICE_ID

__all__ = ["JobRequest", "capacity_router"]

MAX_BLOB_BYTES = 64 * 2**20
_SHA = Path(pattern=r"^[0-9a-f]{64}$")
_OCTETS = "application/octet-stream"
_JOB_ID = Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")
_COUNT = Field(default=0, ge=0, le=MAX_SAFE_INTEGER)


class JobRequest(BaseModel):
    """A batch job: run bundle ``bundle`` on batch ``batch`` (both uploaded first, named by sha256)."""

    bundle: str = Field(pattern=r"^[0-9a-f]{64}$")
    batch: str = Field(pattern=r"^[0-9a-f]{64}$")
    items: int = Field(ge=1, le=1_000_000)
    kinds: list[Annotated[str, Field(pattern=KIND_RE.pattern)]] = Field(
        default=["cuda", "jetson", "cpu"], min_length=1, max_length=16
    )
    min_memory_mb: int = _COUNT
    min_score_mflops: int = _COUNT
    max_price_per_item_micro: int = Field(default=1_000_000, ge=0, le=MAX_SAFE_INTEGER)
    spot_check: bool | None = None
    """Also run on a second device and compare; None: the relay's sampling fraction decides."""


def capacity_router(coordinator: Coordinator) -> APIRouter:
    """The routes over ``coordinator``."""
    router = APIRouter(prefix="/v1/capacity", tags=["capacity"])

    @router.put(
        "/blobs",
        summary="Upload a bundle (tar) or an input batch (.npz); returns its sha256",
        openapi_extra={"requestBody": {"required": True, "content": {_OCTETS: {"schema": {"type": "string"}}}}},
    )
    async def put_blob(_clinic: Clinic, request: Request) -> dict[str, str]:
        data = await request.body()
        if not data or len(data) > MAX_BLOB_BYTES:
            raise HTTPException(413 if data else 422, f"a blob is 1 to {MAX_BLOB_BYTES} bytes")
        return {"sha256": coordinator.put_blob(data)}

    @router.get("/blobs/{sha256}", summary="A blob by hash (devices fetch job inputs here)", response_class=Response)
    def get_blob(sha256: Annotated[str, _SHA]) -> Response:
        data = coordinator.blob(sha256)
        if data is None:
            raise HTTPException(404, f"no blob {sha256}")
        return Response(data, media_type="application/octet-stream")

    @router.post("/jobs", status_code=201, summary="Submit a batch job")
    def submit(clinic: Clinic, job: JobRequest) -> dict[str, str]:
        for digest in (job.bundle, job.batch):
            if not coordinator.has_blob(digest):
                raise HTTPException(422, f"blob {digest} was not uploaded")
        needs = Requirements(
            job.items, tuple(job.kinds), job.min_memory_mb, job.min_score_mflops, job.max_price_per_item_micro
        )
        return {"job_id": coordinator.submit(clinic, job.bundle, job.batch, needs, job.spot_check)}

    @router.get("/jobs", summary="The clinic's newest jobs and their states, newest first")
    def jobs(clinic: Clinic, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
        return {"jobs": coordinator.jobs(clinic, limit)}

    @router.get("/jobs/{job_id}", summary="A job's state, its results when done, and its assignments")
    def job(clinic: Clinic, job_id: Annotated[str, _JOB_ID]) -> dict[str, Any]:
        try:
            return coordinator.job(job_id, clinic)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from exc

    @router.get(
        "/offers", summary="Live capacity offers on the network (the device and offer id only of the clinic's own)"
    )
    def offers(clinic: Clinic) -> dict[str, Any]:
        return {"offers": coordinator.market(clinic)}

    @router.get("/payouts", summary="Payouts for verified compute by the clinic's devices")
    def payouts(
        clinic: Clinic, device: Annotated[str | None, Query(pattern=f"^{DEVICE_ID}$")] = None
    ) -> dict[str, Any]:
        try:
            return {"payouts": coordinator.payouts(device, clinic)}
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from exc

    return router

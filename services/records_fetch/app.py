"""records_fetch's wiring: the `case.accepted` subscriber, the retrieval loop,
the HTTP routes (progress, manifest, override, glass slides) and the clients.

`create_service(settings, clock)` builds one records_fetch process; `python -m
services.records_fetch` runs it. Nothing is built at import: the module names
`service`, `api` and `app` (the AsyncAPI app) are built on first use, so tests
build their own service with their own settings and clock.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' dependency
# annotations at definition time, and they name closures of create_service.

import asyncio
import logging
from typing import Annotated, Any

import httpx
from fastapi import Depends
from pydantic import BaseModel, Field

from services.records_fetch import archive as archives
from services.records_fetch import handlers
from services.records_fetch.checker import Checker
from services.records_fetch.domain import ProviderRegistry, RetryPolicy
from services.records_fetch.retrieval import Retrieval
from services.records_fetch.review_pacs import ReviewPacs
from services.records_fetch.settings import RecordsFetchSettings
from services.records_fetch.store import FetchStore
from shared import providers
from shared.aio import Slots, drain_forever
from shared.auth import Principal
from shared.clock import SYSTEM_CLOCK, Clock
from shared.envelope import EventMeta
from shared.events import CaseAccepted
from shared.http import errors
from shared.runtime import ProcessService, Service
from shared.store import Doc

log = logging.getLogger(__name__)


class OverrideIn(BaseModel):
    reason: str = Field(min_length=5, max_length=2000)


def load_registry(settings: RecordsFetchSettings) -> ProviderRegistry:
    return providers.load_registry(settings.providers_file)


def review_pacs(settings: RecordsFetchSettings) -> ReviewPacs | None:
    """The review PACS client (its own connection pool: a STOW of a slide can be long)."""
    if not settings.review_pacs_url:
        return None
    base = settings.review_pacs_url.rstrip("/")
    return ReviewPacs(
        httpx.AsyncClient(timeout=httpx.Timeout(30.0, write=600.0), follow_redirects=False),
        base,
        (settings.review_viewer_url or base).rstrip("/"),
        settings.review_issuer,
    )


def create_service(
    settings: RecordsFetchSettings | None = None, clock: Clock | None = None
) -> Service:
    """One records_fetch process: store, provider client, retrieval workers, routes."""
    settings = settings or RecordsFetchSettings()
    clock = clock or SYSTEM_CLOCK
    service = Service(
        settings,
        title="Second-opinion records fetch",
        description=(
            "Collects imaging (DICOMweb) and clinical records (FHIR R4) for accepted cases."
        ),
        clock=clock,
    )
    store = FetchStore(
        service.collection("fetches", outbox=True), service.collection("instances"), clock
    )
    service.on_startup(store.create_indexes)
    # One client for the process: connection reuse; redirects off so a provider
    # cannot bounce us to an unregistered host. Closed when the service stops.
    client = httpx.AsyncClient(timeout=settings.provider_timeout_seconds, follow_redirects=False)
    archive = archives.from_settings(settings)
    if isinstance(archive, archives.S3Archive):
        s3 = archive

        async def bucket_ready() -> None:
            # Development (the local stack) creates its bucket; production's exists.
            await asyncio.to_thread(s3.ensure_bucket, create=settings.dev_mode)

        service.on_startup(bucket_ready)
    checker = Checker(settings.check_processes, settings.check_timeout_seconds)
    service.on_startup(checker.start)
    ctx = Retrieval(store, client, load_registry(settings), archive, review_pacs(settings), checker)
    policy = RetryPolicy(
        base_seconds=settings.retry_base_seconds,
        max_delay_seconds=settings.retry_max_delay_seconds,
        max_attempts=settings.retry_max_attempts,
    )
    _retrieval(service, settings, ctx, policy)
    return service


def _retrieval(
    service: Service, settings: RecordsFetchSettings, ctx: Retrieval, policy: RetryPolicy
) -> None:
    store = ctx.store
    wake = asyncio.Event()
    # The retrievals this process runs at once, shared by the polling workers and the
    # new cases handed straight to a free slot.
    slots = Slots(settings.retrieval_workers)

    @service.consumer.on(CaseAccepted)
    async def on_case_accepted(event: CaseAccepted, meta: EventMeta) -> None:
        took = await slots.try_take()
        claim = settings.lease_seconds if took else None
        try:
            opened = await handlers.open_case(store, event, meta, claim_seconds=claim)
        except BaseException:
            if took:
                slots.release()
            raise
        service.emitted(opened.entries)
        if opened.claimed is not None:
            slots.start(run_handed(opened.claimed), name="retrieval of a new case")
            return
        if took:
            slots.release()
        if opened.entries:
            wake.set()  # no slot was free: the next free worker finds the case

    async def run_handed(doc: Doc) -> None:
        try:
            await handlers.run_claimed(ctx, policy, doc, settings.lease_seconds)
            service.relay.wake()
        except Exception as exc:  # the case's lease runs out and a polling worker retries it
            log.warning("retrieval of a new case paused: %s", type(exc).__name__)

    async def run_one() -> bool:
        async with slots:
            ran = await handlers.run_due(ctx, policy, settings.lease_seconds)
        if ran:
            service.relay.wake()
        return ran

    @service.background
    async def retriever() -> None:
        """Run due retrievals; woken by a new case, otherwise polls for re-requests."""
        try:
            await asyncio.gather(
                *(
                    drain_forever(run_one, wake, settings.poll_seconds, f"retrieval worker {n}")
                    for n in range(settings.retrieval_workers)
                )
            )
        finally:
            await ctx.client.aclose()
            if ctx.review is not None:
                await ctx.review.client.aclose()
            await asyncio.to_thread(ctx.checker.close)

    _routes(service, store, wake)


def _routes(service: Service, store: FetchStore, wake: asyncio.Event) -> None:
    api = service.api
    reader = service.require("integrator", "operations")
    operations = service.require("operations")

    @api.get("/v1/cases/{case_id}/progress", tags=["records"])
    async def get_progress(
        case_id: str, principal: Annotated[Principal, Depends(reader)]
    ) -> dict[str, Any]:
        """Instances retrieved / expected, each provider's release request, what is missing."""
        return handlers.progress_view(handlers.visible_case(await store.get(case_id), principal))

    @api.get("/v1/cases/{case_id}/manifest", tags=["records"])
    async def get_manifest(
        case_id: str, principal: Annotated[Principal, Depends(reader)]
    ) -> dict[str, Any]:
        """The completeness manifest with the clinical summaries and each instance's checksum."""
        doc = handlers.visible_case(await store.get(case_id), principal)
        instances = await store.instance_states(case_id)
        return handlers.manifest_view(doc, list(instances.values()))

    @api.post(
        "/v1/cases/{case_id}/override", tags=["records"], status_code=202, responses=errors(409)
    )
    async def override(
        case_id: str, body: OverrideIn, principal: Annotated[Principal, Depends(operations)]
    ) -> dict[str, str]:
        """Complete the records by hand (operations), with the reason recorded and sent on."""
        service.emitted(await handlers.override(store, case_id, principal, body.reason))
        return {"case_id": case_id, "state": "complete"}

    @api.post(
        "/v1/cases/{case_id}/glass-slides/{provider_id}/received",
        tags=["records"],
        status_code=202,
        responses=errors(409),
    )
    async def glass_slides_received(
        case_id: str, provider_id: str, principal: Annotated[Principal, Depends(operations)]
    ) -> dict[str, str]:
        """Log the physical glass slides as arrived; the manifest is re-checked at once."""
        await handlers.mark_glass_slides_received(store, case_id, provider_id, principal)
        wake.set()
        return {"case_id": case_id, "glass_slides": "received"}


default_service = ProcessService(create_service)
__getattr__ = default_service.module_attribute

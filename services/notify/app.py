"""notify's wiring: the subscription and delivery-log API, the subscribers for
partner-facing events and the dispatcher.

`create_service(settings, clock)` builds one notify process; `python -m
services.notify` runs it. The module names `service`, `api` and `app` (the
AsyncAPI app) are built on first use, so importing this module builds
nothing and tests build their own service with their own settings and clock.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' dependency
# annotations at definition time, and they name closures of create_service.

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from services.notify import domain, handlers
from services.notify.channels import Channel, default_channels
from services.notify.handlers import Notify
from services.notify.models import Audience, Subscription
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.aio import drain_forever
from shared.auth import Principal
from shared.clock import SYSTEM_CLOCK, Clock
from shared.envelope import EventMeta
from shared.events import CaseAccepted, CaseRejected, RecordsIncomplete, ReportReady, SlaBreached
from shared.http import errors
from shared.runtime import ProcessService, Service
from shared.vocabulary import PartnerEventType

PARTNER_EVENT_MODELS = (ReportReady, CaseRejected, RecordsIncomplete, SlaBreached)
assert {m.topic for m in PARTNER_EVENT_MODELS} == set(domain.PARTNER_EVENTS)


def _report_ready() -> list[PartnerEventType]:
    return [PartnerEventType.REPORT_READY]


# Sequence numbers are stored as BSON int64: a larger one in a query is the caller's
# error (422), not a database encoding failure (found by the API fuzz test as a 500).
MAX_SEQUENCE = 2**63 - 1


class SubscriptionIn(BaseModel):
    url: str = Field(default="", max_length=2000, description="Webhook URL (or give email)")
    email: str = Field(default="", max_length=200, description="E-mail address (or give url)")
    audience: Audience = "partner"
    event_types: list[PartnerEventType] = Field(default_factory=_report_ready, min_length=1)
    technical_contact_email: str = Field(
        default="", max_length=200, description="Told by e-mail of every dead letter"
    )


class SubscriptionPatch(BaseModel):
    active: bool | None = None
    event_types: list[PartnerEventType] | None = Field(default=None, min_length=1)
    url: str | None = Field(default=None, min_length=8, max_length=2000)
    technical_contact_email: str | None = Field(default=None, max_length=200)


class SubscriptionOut(BaseModel):
    subscription_id: str
    channel: str
    audience: str
    url: str = ""
    email: str = ""
    event_types: list[str]
    active: bool
    secret: str = Field(default="", description="Shown once: at creation and rotation")
    previous_secret_expires_at: list[datetime] = []
    technical_contact_email: str = ""
    last_sequence: int = Field(0, description="The sequence number of the latest delivery")
    circuit: str = Field("closed", description="closed, open (endpoint failing) or half_open")
    circuit_retry_at: datetime | None = None
    disabled_reason: str = Field("", description="Why it stopped by itself, e.g. 410 Gone")

    @classmethod
    def of(cls, sub: Subscription, *, with_secret: bool = False) -> "SubscriptionOut":
        return cls(
            subscription_id=sub.id,
            channel=sub.channel,
            audience=sub.audience,
            url=sub.url,
            email=sub.email,
            event_types=[str(e) for e in sub.event_types],
            active=sub.active,
            secret=sub.secret if with_secret else "",
            previous_secret_expires_at=[p.expires_at for p in sub.previous_secrets],
            technical_contact_email=sub.technical_contact_email,
            last_sequence=sub.sequence,
            circuit=sub.breaker.state,
            circuit_retry_at=sub.breaker.retry_at,
            disabled_reason=sub.disabled_reason,
        )


def create_service(settings: NotifySettings | None = None, clock: Clock | None = None) -> Service:
    """One notify process: routes, subscribers, dispatcher and store on a new Service."""
    settings = settings or NotifySettings()
    service = Service(
        settings,
        title="Second-opinion notify",
        description="Delivers partner-facing events as signed webhooks (Standard Webhooks) "
        "and e-mail, with retries, dead letters, a delivery log and resend.",
        clock=clock or SYSTEM_CLOCK,
    )
    store = NotifyStore(
        service.collection("subscriptions"),
        service.collection("deliveries", outbox=True),
        service.collection("clinicians"),
    )
    service.on_startup(store.create_indexes)
    ctx = Notify(store, settings, service.clock)
    wake = asyncio.Event()
    channels, clients = default_channels(settings, service.clock)
    _subscription_routes(service, ctx, wake)
    _delivery_routes(service, ctx, wake)
    _subscribers(service, ctx, wake)
    _dispatcher(service, ctx, channels, wake)

    @service.background
    async def close_clients() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for client in clients:
                await client.aclose()

    return service


def _subscription_routes(service: Service, ctx: Notify, wake: asyncio.Event) -> None:
    api, store, settings = service.api, ctx.store, ctx.settings
    caller = Annotated[Principal, Depends(service.require("partner"))]

    @api.post(
        "/v1/subscriptions", response_model=SubscriptionOut, status_code=201, tags=["subscriptions"]
    )
    async def create_subscription(body: SubscriptionIn, principal: caller) -> SubscriptionOut:
        sub = await handlers.create_subscription(
            ctx,
            principal.tenant_id,
            body.url,
            [str(e) for e in body.event_types],
            email=body.email,
            audience=body.audience,
            technical_contact_email=body.technical_contact_email,
        )
        return SubscriptionOut.of(sub, with_secret=True)

    @api.get("/v1/subscriptions", tags=["subscriptions"])
    async def list_subscriptions(principal: caller) -> list[SubscriptionOut]:
        return [SubscriptionOut.of(s) for s in await store.subscriptions_of(principal.tenant_id)]

    @api.get("/v1/subscriptions/{sub_id}", tags=["subscriptions"])
    async def get_subscription(sub_id: str, principal: caller) -> SubscriptionOut:
        return SubscriptionOut.of(await store.subscription(principal.tenant_id, sub_id))

    @api.patch("/v1/subscriptions/{sub_id}", tags=["subscriptions"])
    async def patch_subscription(
        sub_id: str, body: SubscriptionPatch, principal: caller
    ) -> SubscriptionOut:
        changes = body.model_dump(mode="json")
        sub = await handlers.update_subscription(ctx, principal.tenant_id, sub_id, changes)
        return SubscriptionOut.of(sub)

    @api.delete("/v1/subscriptions/{sub_id}", status_code=204, tags=["subscriptions"])
    async def delete_subscription(sub_id: str, principal: caller) -> None:
        """Removes the destination: nothing is delivered to it again; the record
        is kept (state `deleted`) for the audit trail."""
        await handlers.delete_subscription(ctx, principal.tenant_id, sub_id)

    @api.post("/v1/subscriptions/{sub_id}/rotate-secret", tags=["subscriptions"])
    async def rotate_secret(
        sub_id: str,
        principal: caller,
        grace_seconds: Annotated[float | None, Query(ge=0, le=7 * 24 * 3600)] = None,
    ) -> SubscriptionOut:
        """A new secret (shown once); the old one also signs until the grace period ends."""
        grace = settings.secret_grace_seconds if grace_seconds is None else grace_seconds
        sub = await handlers.rotate_secret(ctx, principal.tenant_id, sub_id, grace)
        return SubscriptionOut.of(sub, with_secret=True)

    @api.post("/v1/subscriptions/{sub_id}/resend-dead-letters", tags=["deliveries"])
    async def resend_dead_letters(sub_id: str, principal: caller) -> dict[str, int]:
        n = await handlers.resend_dead_letters(ctx, principal.tenant_id, sub_id)
        wake.set()
        return {"resent": n}

    @api.post("/v1/subscriptions/{sub_id}/resend", tags=["deliveries"])
    async def resend_sequences(
        sub_id: str,
        principal: caller,
        from_sequence: Annotated[int, Query(ge=1, le=MAX_SEQUENCE)],
        to_sequence: Annotated[int | None, Query(ge=1, le=MAX_SEQUENCE)] = None,
    ) -> dict[str, int]:
        """A gap in the sequence numbers seen: send the finished deliveries
        numbered from_sequence..to_sequence again (same webhook-ids). Pending
        ones are still on their way and are not counted."""
        last = from_sequence if to_sequence is None else to_sequence
        n = await handlers.resend_sequences(ctx, principal.tenant_id, sub_id, from_sequence, last)
        wake.set()
        return {"resent": n}


def _delivery_routes(service: Service, ctx: Notify, wake: asyncio.Event) -> None:
    api, store = service.api, ctx.store
    caller = Annotated[Principal, Depends(service.require("partner"))]

    operations = Annotated[Principal, Depends(service.require("operations"))]

    @api.get("/v1/delivery-health", tags=["operations"])
    async def delivery_health(principal: operations) -> dict[str, Any]:
        """For the operations dashboard, across tenants (ids only): deliveries by
        state, dead letters by audience, endpoints whose circuit is open and
        subscriptions their endpoint disabled (410)."""
        health = await store.health()
        for key in ("open_circuits", "disabled_subscriptions"):
            health[key] = [
                {
                    "subscription_id": d["_id"],
                    "tenant_id": d.get("tenant_id"),
                    "circuit": (d.get("breaker") or {}).get("state", "closed"),
                    "retry_at": (d.get("breaker") or {}).get("retry_at"),
                    "open_since": (d.get("breaker") or {}).get("opened_at"),
                    "disabled_reason": d.get("disabled_reason", ""),
                }
                for d in health[key]
            ]
        return health

    @api.get("/v1/deliveries", tags=["deliveries"])
    async def list_deliveries(
        principal: caller,
        subscription_id: str | None = None,
        state: Literal["pending", "delivered", "dead_letter"] | None = None,
        case_id: str | None = None,
        sequence: Annotated[int | None, Query(ge=1, le=MAX_SEQUENCE)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        """The delivery log: every attempt with its status, latency and error."""
        filters = {
            "subscription_id": subscription_id,
            "state": state,
            "case_id": case_id,
            "sequence": sequence,
        }
        deliveries = await store.list_deliveries(
            principal.tenant_id, {k: v for k, v in filters.items() if v}, limit
        )
        return [{k: v for k, v in d.view().items() if k != "payload"} for d in deliveries]

    @api.get("/v1/deliveries/{delivery_id}", tags=["deliveries"])
    async def get_delivery(delivery_id: str, principal: caller) -> dict[str, Any]:
        return (await store.delivery(principal.tenant_id, delivery_id)).view()

    @api.post(
        "/v1/deliveries/{delivery_id}/resend",
        status_code=202,
        tags=["deliveries"],
        responses=errors(409),
    )
    async def resend_delivery(delivery_id: str, principal: caller) -> dict[str, str]:
        """Send a finished delivery again, with the same webhook-id and a fresh retry budget."""
        await handlers.resend_delivery(ctx, principal.tenant_id, delivery_id)
        wake.set()
        return {"delivery_id": delivery_id, "state": "pending"}

    @api.post(
        "/v1/operations/deliveries/{delivery_id}/resend", status_code=202, tags=["operations"]
    )
    async def resend_delivery_for_operations(
        delivery_id: str,
        tenant_id: Annotated[str, Query(min_length=1, max_length=64)],
        _: Annotated[Principal, Depends(service.require("operations"))],
    ) -> dict[str, str]:
        """Operations resend a tenant's finished delivery (the operations view's action);
        the same rules as the partner's resend, the operator recorded in the audit."""
        await handlers.resend_delivery(ctx, tenant_id, delivery_id)
        wake.set()
        return {"delivery_id": delivery_id, "state": "pending"}


def _subscribers(service: Service, ctx: Notify, wake: asyncio.Event) -> None:
    async def fan_out(event: Any, meta: EventMeta) -> None:
        if await handlers.fan_out(ctx, event, meta):
            wake.set()

    service.consumer.on(ReportReady)(fan_out)

    @service.consumer.on(CaseAccepted, follower=True)
    async def on_case_accepted(event: CaseAccepted, meta: EventMeta) -> None:
        """The treating clinician's address, kept for the report's e-mail."""
        await handlers.remember_clinician(ctx, event)

    # Off a case's path to its report: the longer fetch wait (EventConsumer.on).
    service.consumer.on(CaseRejected, follower=True)(fan_out)
    service.consumer.on(RecordsIncomplete, follower=True)(fan_out)
    service.consumer.on(SlaBreached, follower=True)(fan_out)


def _dispatcher(
    service: Service, ctx: Notify, channels: dict[str, Channel], wake: asyncio.Event
) -> None:
    """`dispatch_workers` loops, each sending the deliveries of its share of the
    subscriptions one at a time: a slow endpoint holds up only its own worker,
    and one subscription's deliveries go out in sequence order."""
    workers = max(1, ctx.settings.dispatch_workers)
    wakes = [asyncio.Event() for _ in range(workers)]

    async def fan_wake() -> None:
        while True:
            await wake.wait()
            wake.clear()
            for w in wakes:
                w.set()

    service.background(fan_wake)
    for shard in range(workers):

        def worker(shard: int = shard) -> Any:
            async def dispatch() -> bool:
                sent = await handlers.dispatch_one(ctx, channels, shard)
                if sent:
                    service.relay.wake()
                return sent

            async def dispatcher() -> None:
                """Send due deliveries; woken by new ones, otherwise polls for retries."""
                await drain_forever(
                    dispatch, wakes[shard], ctx.settings.dispatch_interval_seconds, "dispatcher"
                )

            dispatcher.__name__ = f"dispatcher_{shard}"
            return dispatcher

        service.background(worker())


default_service = ProcessService(create_service)
__getattr__ = default_service.module_attribute

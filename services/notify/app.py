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
from shared.events import CaseRejected, RecordsIncomplete, ReportReady, SlaBreached
from shared.http import errors
from shared.runtime import ProcessService, Service
from shared.vocabulary import PartnerEventType

PARTNER_EVENT_MODELS = (ReportReady, CaseRejected, RecordsIncomplete, SlaBreached)
assert {m.topic for m in PARTNER_EVENT_MODELS} == set(domain.PARTNER_EVENTS)


def _report_ready() -> list[PartnerEventType]:
    return [PartnerEventType.REPORT_READY]


class SubscriptionIn(BaseModel):
    url: str = Field(default="", max_length=2000, description="Webhook URL (or give email)")
    email: str = Field(default="", max_length=200, description="E-mail address (or give url)")
    audience: Audience = "partner"
    event_types: list[PartnerEventType] = Field(default_factory=_report_ready, min_length=1)


class SubscriptionPatch(BaseModel):
    active: bool | None = None
    event_types: list[PartnerEventType] | None = Field(default=None, min_length=1)
    url: str | None = Field(default=None, min_length=8, max_length=2000)


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
        service.collection("subscriptions"), service.collection("deliveries", outbox=True)
    )
    service.on_startup(store.create_indexes)
    ctx = Notify(store, settings, service.clock)
    wake = asyncio.Event()
    channels, client = default_channels(settings, service.clock)
    _subscription_routes(service, ctx, wake)
    _delivery_routes(service, ctx, wake)
    _subscribers(service, ctx, wake)
    _dispatcher(service, ctx, channels, wake)

    @service.background
    async def close_webhook_client() -> None:
        try:
            await asyncio.Event().wait()
        finally:
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


def _delivery_routes(service: Service, ctx: Notify, wake: asyncio.Event) -> None:
    api, store = service.api, ctx.store
    caller = Annotated[Principal, Depends(service.require("partner"))]

    @api.get("/v1/deliveries", tags=["deliveries"])
    async def list_deliveries(
        principal: caller,
        subscription_id: str | None = None,
        state: Literal["pending", "delivered", "dead_letter"] | None = None,
        case_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        """The delivery log: every attempt with its status, latency and error."""
        filters = {"subscription_id": subscription_id, "state": state, "case_id": case_id}
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


def _subscribers(service: Service, ctx: Notify, wake: asyncio.Event) -> None:
    async def fan_out(event: Any, meta: EventMeta) -> None:
        if await handlers.fan_out(ctx, event, meta):
            wake.set()

    service.consumer.on(ReportReady)(fan_out)
    # Off a case's path to its report: the longer fetch wait (EventConsumer.on).
    service.consumer.on(CaseRejected, follower=True)(fan_out)
    service.consumer.on(RecordsIncomplete, follower=True)(fan_out)
    service.consumer.on(SlaBreached, follower=True)(fan_out)


def _dispatcher(
    service: Service, ctx: Notify, channels: dict[str, Channel], wake: asyncio.Event
) -> None:
    async def dispatch() -> bool:
        sent = await handlers.dispatch_one(ctx, channels)
        if sent:
            service.relay.wake()
        return sent

    @service.background
    async def dispatcher() -> None:
        """Send due deliveries; woken by new ones, otherwise polls for retries."""
        await drain_forever(dispatch, wake, ctx.settings.dispatch_interval_seconds, "dispatcher")


default_service = ProcessService(create_service)
__getattr__ = default_service.module_attribute

"""notify's wiring: the subscription and delivery-log API, the subscribers for
partner-facing events and the dispatcher."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

import httpx
from fastapi import Depends, Query
from pydantic import BaseModel, Field

from services.notify import domain, handlers
from services.notify.channels import Channel, EmailChannel, WebhookChannel
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.aio import drain_forever
from shared.auth import Principal
from shared.envelope import EventMeta
from shared.events import CaseRejected, RecordsIncomplete, ReportReady, SlaBreached
from shared.runtime import Service
from shared.store import Doc

settings = NotifySettings()
service = Service(
    settings,
    title="Second-opinion notify",
    description="Delivers partner-facing events as signed webhooks (Standard Webhooks) "
    "and e-mail, with retries, dead letters, a delivery log and resend.",
)
store = NotifyStore(
    service.collection("subscriptions"), service.collection("deliveries", outbox=True)
)
service.on_startup(store.create_indexes)
partner = service.require("partner")
Caller = Annotated[Principal, Depends(partner)]
api = service.api
app = service.asyncapi
client = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
channels: dict[str, Channel] = {
    "webhook": WebhookChannel(client, settings),
    "email": EmailChannel(settings),
}
_wake = asyncio.Event()
EventType = Literal["report.ready", "case.rejected", "records.incomplete", "sla.breached"]


def _report_ready() -> list[EventType]:
    return ["report.ready"]


class SubscriptionIn(BaseModel):
    url: str = Field(default="", max_length=2000, description="Webhook URL (or give email)")
    email: str = Field(default="", max_length=200, description="E-mail address (or give url)")
    audience: Literal["partner", "treating_clinician", "patient_portal"] = "partner"
    event_types: list[EventType] = Field(default_factory=_report_ready, min_length=1)


class SubscriptionPatch(BaseModel):
    active: bool | None = None
    event_types: list[EventType] | None = Field(default=None, min_length=1)
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
    def of(cls, doc: Doc, *, with_secret: bool = False) -> SubscriptionOut:
        return cls(
            subscription_id=doc["_id"],
            channel=doc.get("channel", "webhook"),
            audience=doc.get("audience", "partner"),
            url=doc.get("url", ""),
            email=doc.get("email", ""),
            event_types=doc["event_types"],
            active=doc["active"],
            secret=doc.get("secret", "") if with_secret else "",
            previous_secret_expires_at=[p["expires_at"] for p in doc.get("previous_secrets", [])],
        )


@api.post(
    "/v1/subscriptions", response_model=SubscriptionOut, status_code=201, tags=["subscriptions"]
)
async def create_subscription(body: SubscriptionIn, principal: Caller) -> SubscriptionOut:
    doc = await handlers.create_subscription(
        store,
        settings,
        principal.tenant_id,
        body.url,
        list(body.event_types),
        email=body.email,
        audience=body.audience,
    )
    return SubscriptionOut.of(doc, with_secret=True)


@api.get("/v1/subscriptions", tags=["subscriptions"])
async def list_subscriptions(principal: Caller) -> list[SubscriptionOut]:
    return [SubscriptionOut.of(d) for d in await store.subscriptions_of(principal.tenant_id)]


@api.get("/v1/subscriptions/{sub_id}", tags=["subscriptions"])
async def get_subscription(sub_id: str, principal: Caller) -> SubscriptionOut:
    return SubscriptionOut.of(await store.subscription(principal.tenant_id, sub_id))


@api.patch("/v1/subscriptions/{sub_id}", tags=["subscriptions"])
async def patch_subscription(
    sub_id: str, body: SubscriptionPatch, principal: Caller
) -> SubscriptionOut:
    doc = await handlers.update_subscription(
        store, settings, principal.tenant_id, sub_id, body.model_dump()
    )
    return SubscriptionOut.of(doc)


@api.delete("/v1/subscriptions/{sub_id}", status_code=204, tags=["subscriptions"])
async def delete_subscription(sub_id: str, principal: Caller) -> None:
    await store.delete_subscription(principal.tenant_id, sub_id)


@api.post("/v1/subscriptions/{sub_id}/rotate-secret", tags=["subscriptions"])
async def rotate_secret(
    sub_id: str,
    principal: Caller,
    grace_seconds: Annotated[float | None, Query(ge=0, le=7 * 24 * 3600)] = None,
) -> SubscriptionOut:
    """A new secret (shown once); the old one also signs until the grace period ends."""
    grace = settings.secret_grace_seconds if grace_seconds is None else grace_seconds
    doc = await handlers.rotate_secret(store, principal.tenant_id, sub_id, grace)
    return SubscriptionOut.of(doc, with_secret=True)


@api.post("/v1/subscriptions/{sub_id}/resend-dead-letters", tags=["deliveries"])
async def resend_dead_letters(sub_id: str, principal: Caller) -> dict[str, int]:
    n = await handlers.resend_dead_letters(store, principal.tenant_id, sub_id)
    _wake.set()
    return {"resent": n}


@api.get("/v1/deliveries", tags=["deliveries"])
async def list_deliveries(
    principal: Caller,
    subscription_id: str | None = None,
    state: Literal["pending", "delivered", "dead_letter"] | None = None,
    case_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """The delivery log: every attempt with its status, latency and error."""
    filters = {"subscription_id": subscription_id, "state": state, "case_id": case_id}
    docs = await store.list_deliveries(
        principal.tenant_id, {k: v for k, v in filters.items() if v}, limit
    )
    return [{"delivery_id": d.pop("_id"), **d} for d in docs]


@api.get("/v1/deliveries/{delivery_id}", tags=["deliveries"])
async def get_delivery(delivery_id: str, principal: Caller) -> dict[str, Any]:
    doc = await store.delivery(principal.tenant_id, delivery_id)
    return {"delivery_id": doc.pop("_id"), **doc}


@api.post("/v1/deliveries/{delivery_id}/resend", status_code=202, tags=["deliveries"])
async def resend_delivery(delivery_id: str, principal: Caller) -> dict[str, str]:
    """Send a finished delivery again, with the same webhook-id and a fresh retry budget."""
    await store.resend_one(principal.tenant_id, delivery_id)
    _wake.set()
    return {"delivery_id": delivery_id, "state": "pending"}


async def _fan_out(event: Any, meta: EventMeta) -> None:
    if await handlers.fan_out(store, event, meta):
        _wake.set()


service.consumer.on(ReportReady)(_fan_out)
# Off a case's path to its report: the longer fetch wait (EventConsumer.on).
service.consumer.on(CaseRejected, follower=True)(_fan_out)
service.consumer.on(RecordsIncomplete, follower=True)(_fan_out)
service.consumer.on(SlaBreached, follower=True)(_fan_out)
assert {m.topic for m in (ReportReady, CaseRejected, RecordsIncomplete, SlaBreached)} == set(
    domain.PARTNER_EVENTS
)


@service.background
async def dispatcher() -> None:
    """Send due deliveries; woken by new ones, otherwise polls for retries."""
    await drain_forever(_dispatch, _wake, settings.dispatch_interval_seconds, "dispatcher")


async def _dispatch() -> bool:
    sent = await handlers.dispatch_one(store, settings, channels)
    if sent:
        service.relay.wake()
    return sent

"""notify's wiring: the partner subscription API, the subscribers for
partner-facing events and the webhook dispatcher."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import httpx
from fastapi import Depends
from pydantic import BaseModel, Field

from services.notify import handlers
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.aio import sleep_until_woken
from shared.auth import Principal, require
from shared.envelope import EventMeta
from shared.events import ReportReady
from shared.runtime import Service

log = logging.getLogger(__name__)
settings = NotifySettings()
service = Service(
    settings,
    title="Second-opinion notify",
    description="Delivers partner-facing events as signed webhooks (Standard Webhooks).",
)
store = NotifyStore(
    service.collection("subscriptions"), service.collection("deliveries", outbox=True)
)
service.on_startup(store.create_indexes)
partner = require(service.credentials, "partner")
api = service.api
app = service.asyncapi
client = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
_wake = asyncio.Event()
PARTNER_EVENTS = ["report.ready"]


class SubscriptionIn(BaseModel):
    url: str = Field(min_length=8, max_length=2000)
    event_types: list[str] = Field(default_factory=lambda: list(PARTNER_EVENTS), min_length=1)


class SubscriptionOut(BaseModel):
    subscription_id: str
    url: str
    event_types: list[str]
    active: bool
    secret: str = Field(default="", description="Shown once, at creation")


@api.post(
    "/v1/subscriptions", response_model=SubscriptionOut, status_code=201, tags=["subscriptions"]
)
async def create_subscription(
    body: SubscriptionIn, principal: Annotated[Principal, Depends(partner)]
) -> SubscriptionOut:
    doc = await handlers.create_subscription(
        store, settings, principal.tenant_id, body.url, body.event_types
    )
    return SubscriptionOut(subscription_id=doc["_id"], **doc)


@api.get("/v1/deliveries", tags=["deliveries"])
async def list_deliveries(
    principal: Annotated[Principal, Depends(partner)],
) -> list[dict[str, Any]]:
    cursor = store.deliveries.find(
        {"tenant_id": principal.tenant_id}, {"payload": 0, "outbox": 0, "traceparent": 0}
    )
    return [{"delivery_id": d.pop("_id"), **d} for d in await cursor.to_list(500)]


@service.consumer.on(ReportReady)
async def on_report_ready(event: ReportReady, meta: EventMeta) -> None:
    if await handlers.fan_out(store, event, meta):
        _wake.set()


@service.background
async def dispatcher() -> None:
    """Send due deliveries; woken by new ones, otherwise polls for retries."""
    while True:
        try:
            while await _dispatch_traced():
                pass
        except Exception as exc:  # database down: keep the loop alive, try later
            log.warning("dispatcher paused: %s", type(exc).__name__)
        await sleep_until_woken(_wake, settings.dispatch_interval_seconds)


async def _dispatch_traced() -> bool:
    sent = await handlers.dispatch_one(store, settings, client)
    if sent:
        service.relay.wake()
    return sent

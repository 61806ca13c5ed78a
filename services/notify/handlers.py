"""notify's handlers: a partner-facing event → one durable delivery per matching
subscription; the dispatcher sends due deliveries, signed, and records each
attempt, retrying with backoff until delivered or dead-lettered."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import httpx

from services.notify import domain, webhooks
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.envelope import EventMeta, outbox_entry
from shared.errors import UnregisteredEndpoint
from shared.events import NotificationDelivered
from shared.store import Doc
from shared.telemetry import attach_traceparent, current_traceparent, detach, quiet


async def validate_url(url: str, settings: NotifySettings) -> None:
    domain.check_webhook_url(
        url,
        await webhooks.resolve(url),
        production=not settings.dev_mode,
        allow_loopback=settings.allow_loopback_webhooks,
    )


async def create_subscription(
    store: NotifyStore, settings: NotifySettings, tenant_id: str, url: str, event_types: list[str]
) -> Doc:
    await validate_url(url, settings)
    doc = {
        "_id": "sub_" + uuid.uuid4().hex[:16],
        "tenant_id": tenant_id,
        "url": url,
        "event_types": event_types,
        "secret": webhooks.new_secret(),
        "active": True,
        "created_at": webhooks.now(),
    }
    await store.subscriptions.insert_one(doc)
    return doc


async def fan_out(store: NotifyStore, event: Any, meta: EventMeta) -> int:
    """Create the deliveries for one event; a redelivered event creates none."""
    event_type = event.topic
    created = 0
    for sub in await store.active_subscriptions(event.tenant_id, event_type):
        now = webhooks.now()
        doc = {
            "_id": domain.delivery_id_for(meta.event_id, sub["_id"]),
            "tenant_id": event.tenant_id,
            "case_id": event.case_id,
            "subscription_id": sub["_id"],
            "event_id": meta.event_id,
            "event_type": event_type,
            "payload": {
                "type": event_type,
                "timestamp": meta.time,
                "data": event.model_dump(mode="json"),
            },
            "traceparent": current_traceparent(),
            "state": "pending",
            "attempts": [],
            "next_attempt_at": now,
            "lease_until": now,
            "created_at": now,
        }
        created += await store.create_delivery(doc)
    return created


def _next_state(
    settings: NotifySettings, n_attempts: int, result: webhooks.AttemptResult
) -> tuple[str, Any]:
    if result.ok:
        return "delivered", None
    if not result.retryable or n_attempts >= settings.max_attempts:
        return "dead_letter", None
    delay = domain.backoff_seconds(
        n_attempts, settings.base_backoff_seconds, settings.max_backoff_seconds, result.retry_after
    )
    return "pending", webhooks.now() + timedelta(seconds=delay)


async def _attempt(
    client: httpx.AsyncClient, settings: NotifySettings, sub: Doc, delivery: Doc
) -> webhooks.AttemptResult:
    try:
        await validate_url(sub["url"], settings)  # again at send time: DNS may have changed
    except UnregisteredEndpoint as exc:
        return webhooks.AttemptResult(False, False, None, exc.detail, 0.0)
    body = json.dumps(delivery["payload"], separators=(",", ":"), sort_keys=True)
    headers = webhooks.signed_headers(sub["secret"], delivery["_id"], body, webhooks.now())
    return await webhooks.post(client, sub["url"], headers, body)


async def dispatch_one(
    store: NotifyStore, settings: NotifySettings, client: httpx.AsyncClient
) -> bool:
    """Send one due delivery, if any; returns whether there was one."""
    with quiet():
        delivery = await store.claim_due(settings.webhook_timeout_seconds + 5)
    if delivery is None:
        return False
    sub = await store.subscriptions.find_one({"_id": delivery["subscription_id"]})
    if sub is None or not sub.get("active"):
        result = webhooks.AttemptResult(False, False, None, "subscription inactive or removed", 0.0)
    else:
        token = attach_traceparent(delivery.get("traceparent", ""))  # the case's trace
        try:
            result = await _attempt(client, settings, sub, delivery)
        finally:
            detach(token)
    n = len(delivery["attempts"]) + 1
    state, next_at = _next_state(settings, n, result)
    attempt = {
        "n": n,
        "at": webhooks.now(),
        "status": result.status,
        "error": result.error,
        "latency_ms": round(result.latency_ms, 1),
    }
    outbox = []
    if state in ("delivered", "dead_letter"):
        done = NotificationDelivered(
            case_id=delivery["case_id"],
            tenant_id=delivery["tenant_id"],
            delivery_id=delivery["_id"],
            event_type=delivery["event_type"],
            channel="webhook",
            subscription_id=delivery["subscription_id"],
            status=state,
        )
        outbox.append(outbox_entry(done, traceparent=delivery.get("traceparent", "")))
    await store.record_attempt(delivery["_id"], attempt, state, next_at, outbox)
    return True

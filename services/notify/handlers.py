"""notify's handlers: managing a tenant's destinations; a partner-facing event →
one durable delivery per matching subscription; the dispatcher sends due
deliveries on their channel and records each attempt, retrying with backoff
until delivered or dead-lettered; resending finished deliveries."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from services.notify import domain, webhooks
from services.notify.channels import Channel, validate_url
from services.notify.domain import AttemptResult
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.envelope import EventMeta, outbox_entry
from shared.errors import InvalidInput
from shared.events import NotificationDelivered
from shared.store import Doc
from shared.telemetry import attach_traceparent, current_traceparent, detach, quiet

__all__ = ["validate_url"]


async def create_subscription(
    store: NotifyStore,
    settings: NotifySettings,
    tenant_id: str,
    url: str,
    event_types: list[str],
    *,
    email: str = "",
    audience: str = "partner",
) -> Doc:
    """A webhook (url) or e-mail (email) destination; a webhook gets a new secret."""
    if bool(url) == bool(email):
        raise InvalidInput("give exactly one of url (webhook) or email")
    doc: Doc = {
        "_id": "sub_" + uuid.uuid4().hex[:16],
        "tenant_id": tenant_id,
        "audience": audience,
        "channel": "webhook" if url else "email",
        "event_types": domain.check_event_types(event_types),
        "active": True,
        "created_at": webhooks.now(),
    }
    if url:
        await validate_url(url, settings)
        doc.update(url=url, secret=webhooks.new_secret(), previous_secrets=[])
    else:
        doc["email"] = domain.check_email_address(email)
    await store.subscriptions.insert_one(doc)
    return doc


async def update_subscription(
    store: NotifyStore,
    settings: NotifySettings,
    tenant_id: str,
    sub_id: str,
    changes: dict[str, Any],
) -> Doc:
    """Change active, event_types or the URL (re-checked against SSRF)."""
    fields: Doc = {}
    if changes.get("active") is not None:
        fields["active"] = bool(changes["active"])
    if changes.get("event_types") is not None:
        fields["event_types"] = domain.check_event_types(changes["event_types"])
    if changes.get("url"):
        current = await store.subscription(tenant_id, sub_id)
        if current["channel"] != "webhook":
            raise InvalidInput("only a webhook destination has a URL")
        await validate_url(changes["url"], settings)
        fields["url"] = changes["url"]
    fields["updated_at"] = webhooks.now()
    return await store.update_subscription(tenant_id, sub_id, {"$set": fields})


async def rotate_secret(
    store: NotifyStore, tenant_id: str, sub_id: str, grace_seconds: float
) -> Doc:
    """A new secret; the old one keeps signing (a second signature) for the
    grace period so the partner can switch without dropping a webhook."""
    current = await store.subscription(tenant_id, sub_id)
    if current["channel"] != "webhook":
        raise InvalidInput("only a webhook destination has a secret")
    now = webhooks.now()
    kept = [p for p in current.get("previous_secrets", []) if p["expires_at"] > now]
    if grace_seconds > 0:
        kept.append(
            {"secret": current["secret"], "expires_at": now + timedelta(seconds=grace_seconds)}
        )
    update = {
        "$set": {"secret": webhooks.new_secret(), "previous_secrets": kept, "updated_at": now}
    }
    return await store.update_subscription(tenant_id, sub_id, update)


async def fan_out(store: NotifyStore, event: Any, meta: EventMeta) -> int:
    """Create the deliveries for one event; a redelivered event creates none.
    Only the event's own tenant's subscriptions are considered."""
    event_type = event.topic
    created = 0
    for sub in await store.active_subscriptions(event.tenant_id, event_type):
        now = webhooks.now()
        doc = {
            "_id": domain.delivery_id_for(meta.event_id, sub["_id"]),
            "tenant_id": event.tenant_id,
            "case_id": event.case_id,
            "subscription_id": sub["_id"],
            "channel": sub.get("channel", "webhook"),
            "audience": sub.get("audience", "partner"),
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
            "cycle_attempts": 0,
            "next_attempt_at": now,
            "lease_until": now,
            "created_at": now,
        }
        created += await store.create_delivery(doc)
    return created


def _log_entry(n: int, result: AttemptResult) -> Doc:
    return {
        "n": n,
        "at": webhooks.now(),
        "status": result.status,
        "error": result.error,
        "latency_ms": round(result.latency_ms, 1),
    }


def _interrupted(delivery: Doc) -> list[Doc]:
    """A send that started but was never recorded (the dispatcher died): its
    outcome is unknown, so it is logged as such and the same delivery re-sent."""
    if not delivery.get("in_flight"):
        return []
    entry = _log_entry(len(delivery["attempts"]) + 1, AttemptResult(False, True, None, "", 0.0))
    entry.update(at=delivery["in_flight"], error="interrupted: outcome unknown", latency_ms=None)
    return [entry]


async def _send(channels: dict[str, Channel], sub: Doc | None, delivery: Doc) -> AttemptResult:
    if sub is None or not sub.get("active"):
        return AttemptResult(False, False, None, "subscription inactive or removed", 0.0)
    token = attach_traceparent(delivery.get("traceparent", ""))  # the case's trace
    try:
        return await channels[sub.get("channel", "webhook")].send(sub, delivery)
    finally:
        detach(token)


def _finished_event(delivery: Doc, state: str) -> list[Any]:
    if state not in ("delivered", "dead_letter"):
        return []
    done = NotificationDelivered(
        case_id=delivery["case_id"],
        tenant_id=delivery["tenant_id"],
        delivery_id=delivery["_id"],
        event_type=delivery["event_type"],
        channel=delivery.get("channel", "webhook"),
        subscription_id=delivery["subscription_id"],
        status=state,
    )
    return [outbox_entry(done, traceparent=delivery.get("traceparent", ""))]


async def dispatch_one(
    store: NotifyStore, settings: NotifySettings, channels: dict[str, Channel]
) -> bool:
    """Send one due delivery, if any; returns whether there was one."""
    with quiet():
        delivery = await store.claim_due(
            settings.webhook_timeout_seconds + settings.lease_margin_seconds
        )
    if delivery is None:
        return False
    sub = await store.subscriptions.find_one({"_id": delivery["subscription_id"]})
    log = _interrupted(delivery)
    result = await _send(channels, sub, delivery)
    log.append(_log_entry(len(delivery["attempts"]) + len(log) + 1, result))
    policy = domain.RetryPolicy(
        settings.max_attempts, settings.base_backoff_seconds, settings.max_backoff_seconds
    )
    cycle = delivery.get("cycle_attempts", len(delivery["attempts"])) + len(log)
    state, next_at = domain.next_state(policy, cycle, result, webhooks.now())
    await store.record_attempt(
        delivery["_id"], log, state, next_at, _finished_event(delivery, state)
    )
    return True


async def resend_dead_letters(store: NotifyStore, tenant_id: str, sub_id: str) -> int:
    await store.subscription(tenant_id, sub_id)  # NotFound unless the tenant's own
    query = {"tenant_id": tenant_id, "subscription_id": sub_id, "state": "dead_letter"}
    return await store.resend(query)

"""notify's handlers: managing a tenant's destinations; a partner-facing event →
one durable delivery per matching subscription; the dispatcher sends due
deliveries on their channel and records each attempt, retrying with backoff
until delivered or dead-lettered; resending finished deliveries.

Time is read from the injected clock only; documents go through the store."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.notify import domain, webhooks
from services.notify.channels import Channel, validate_url
from services.notify.domain import AttemptResult
from services.notify.models import Attempt, Audience, Delivery, PreviousSecret, Subscription
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.clock import Clock
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import InvalidInput, PermanentError
from shared.events import NotificationDelivered
from shared.store import Doc
from shared.telemetry import attach_traceparent, current_traceparent, detach, quiet
from shared.vocabulary import PartnerEventType

__all__ = ["Notify", "validate_url"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notify:
    """What every handler works with: the store, the settings and the clock."""

    store: NotifyStore
    settings: NotifySettings
    clock: Clock


async def create_subscription(
    ctx: Notify,
    tenant_id: str,
    url: str,
    event_types: list[str],
    *,
    email: str = "",
    audience: Audience = "partner",
) -> Subscription:
    """A webhook (url) or e-mail (email) destination; a webhook gets a new secret.
    The URL and address stored are the normalised ones that were checked."""
    if bool(url) == bool(email):
        raise InvalidInput("give exactly one of url (webhook) or email")
    sub = Subscription(
        id="sub_" + uuid.uuid4().hex[:16],
        tenant_id=tenant_id,
        audience=audience,
        channel="webhook" if url else "email",
        event_types=[PartnerEventType(e) for e in domain.check_event_types(event_types)],
        created_at=ctx.clock.now(),
    )
    if url:
        sub.url = await validate_url(url, ctx.settings)
        sub.secret = webhooks.new_secret()
    else:
        sub.email = domain.check_email_address(email)
    await ctx.store.add_subscription(sub)
    return sub


async def update_subscription(
    ctx: Notify, tenant_id: str, sub_id: str, changes: dict[str, Any]
) -> Subscription:
    """Change active, event_types or the URL (re-checked against SSRF)."""
    fields: Doc = {}
    if changes.get("active") is not None:
        fields["active"] = bool(changes["active"])
    if changes.get("event_types") is not None:
        fields["event_types"] = domain.check_event_types(changes["event_types"])
    if changes.get("url"):
        current = await ctx.store.subscription(tenant_id, sub_id)
        if current.channel != "webhook":
            raise InvalidInput("only a webhook destination has a URL")
        fields["url"] = await validate_url(changes["url"], ctx.settings)
    return await ctx.store.update_subscription(tenant_id, sub_id, fields, ctx.clock.now())


async def rotate_secret(
    ctx: Notify, tenant_id: str, sub_id: str, grace_seconds: float
) -> Subscription:
    """A new secret; the old one keeps signing (a second signature) for the
    grace period so the partner can switch without dropping a webhook."""
    current = await ctx.store.subscription(tenant_id, sub_id)
    if current.channel != "webhook":
        raise InvalidInput("only a webhook destination has a secret")
    now = ctx.clock.now()
    kept = [p for p in current.previous_secrets if p.expires_at > now]
    if grace_seconds > 0:
        expires = now + timedelta(seconds=grace_seconds)
        kept.append(PreviousSecret(secret=current.secret, expires_at=expires))
    fields = {"secret": webhooks.new_secret(), "previous_secrets": [p.model_dump() for p in kept]}
    return await ctx.store.update_subscription(tenant_id, sub_id, fields, now)


async def delete_subscription(ctx: Notify, tenant_id: str, sub_id: str) -> None:
    await ctx.store.delete_subscription(tenant_id, sub_id, ctx.clock.now())


async def fan_out(ctx: Notify, event: Any, meta: EventMeta) -> int:
    """Create the deliveries for one event; a redelivered event creates none.
    Only the event's own tenant's subscriptions are considered. Links in the
    payload are notify's own (domain.payload_data), never the event's."""
    event_type = event.topic
    data = domain.payload_data(
        event_type, event.model_dump(mode="json"), ctx.settings.public_reporting_url
    )
    created = 0
    for sub in await ctx.store.active_subscriptions(event.tenant_id, event_type):
        now = ctx.clock.now()
        delivery = Delivery(
            id=domain.delivery_id_for(meta.event_id, sub.id),
            tenant_id=event.tenant_id,
            case_id=event.case_id,
            subscription_id=sub.id,
            channel=sub.channel,
            audience=sub.audience,
            event_id=meta.event_id,
            event_type=PartnerEventType(event_type),
            payload={"type": event_type, "timestamp": meta.time, "data": data},
            traceparent=current_traceparent(),
            next_attempt_at=now,
            lease_until=now,
            created_at=now,
        )
        created += await ctx.store.create_delivery(delivery)
    return created


def _attempt(n: int, result: AttemptResult, ctx: Notify) -> Attempt:
    return Attempt(
        n=n,
        at=ctx.clock.now(),
        status=result.status,
        error=result.error,
        latency_ms=round(result.latency_ms, 1),
    )


def _interrupted(delivery: Delivery) -> list[Attempt]:
    """A send that started but was never recorded (the dispatcher died): its
    outcome is unknown, so it is logged as such and the same delivery re-sent."""
    if delivery.in_flight is None:
        return []
    n = len(delivery.attempts) + 1
    error = "interrupted: outcome unknown"
    return [Attempt(n=n, at=delivery.in_flight, status=None, error=error, latency_ms=None)]


async def _send(
    channels: dict[str, Channel], sub: Subscription | None, delivery: Delivery
) -> AttemptResult:
    """One attempt, whatever goes wrong: an exception sending this delivery is
    this delivery's failed attempt, never a stop of the dispatcher (which would
    re-claim it every lease and hold up every other tenant's deliveries)."""
    if sub is None or not sub.sends:
        return AttemptResult(False, False, None, "subscription inactive or removed", 0.0)
    token = attach_traceparent(delivery.traceparent)  # the case's trace
    try:
        return await channels[sub.channel].send(sub, delivery)
    except PermanentError as exc:
        return AttemptResult(False, False, None, exc.detail, 0.0)
    except Exception as exc:
        log.warning("delivery %s: send failed with %s", delivery.id, type(exc).__name__)
        return AttemptResult(False, True, None, type(exc).__name__, 0.0)
    finally:
        detach(token)


def _finished_event(delivery: Delivery, state: str) -> list[OutboxEntry]:
    if state not in ("delivered", "dead_letter"):
        return []
    done = NotificationDelivered(
        case_id=delivery.case_id,
        tenant_id=delivery.tenant_id,
        delivery_id=delivery.id,
        event_type=str(delivery.event_type),
        channel=delivery.channel,
        subscription_id=delivery.subscription_id,
        status=state,
        audience=delivery.audience,
    )
    return [outbox_entry(done, traceparent=delivery.traceparent)]


async def dispatch_one(ctx: Notify, channels: dict[str, Channel]) -> bool:
    """Send one due delivery, if any; returns whether there was one."""
    settings = ctx.settings
    with quiet():
        delivery = await ctx.store.claim_due(
            settings.webhook_timeout_seconds + settings.lease_margin_seconds, ctx.clock.now()
        )
    if delivery is None:
        return False
    sub = await ctx.store.subscription_by_id(delivery.subscription_id)
    log_entries = _interrupted(delivery)
    result = await _send(channels, sub, delivery)
    log_entries.append(_attempt(len(delivery.attempts) + len(log_entries) + 1, result, ctx))
    policy = domain.RetryPolicy(
        settings.max_attempts, settings.base_backoff_seconds, settings.max_backoff_seconds
    )
    cycle = delivery.cycle_attempts + len(log_entries)
    now = ctx.clock.now()
    state, next_at = domain.next_state(policy, cycle, result, now)
    await ctx.store.record_attempt(
        delivery.id, log_entries, state, next_at, _finished_event(delivery, state), now
    )
    return True


async def resend_dead_letters(ctx: Notify, tenant_id: str, sub_id: str) -> int:
    return await ctx.store.resend_dead_letters(tenant_id, sub_id, ctx.clock.now())


async def resend_delivery(ctx: Notify, tenant_id: str, delivery_id: str) -> None:
    await ctx.store.resend_one(tenant_id, delivery_id, ctx.clock.now())

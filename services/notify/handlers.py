"""notify's handlers: managing a tenant's destinations; a partner-facing event →
one durable delivery per matching subscription; the dispatcher sends due
deliveries on their channel and records each attempt, retrying with backoff
until delivered or dead-lettered; resending finished deliveries.

Time is read from the injected clock only; documents go through the store."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from prometheus_client import Counter

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

# Alert on any (deploy/k8s/base/prometheus-rules.yaml, NotifyDeliveryDeadLettered).
DEAD_LETTERS = Counter(
    "notify_dead_letters_total",
    "Deliveries dead-lettered (given up on): each also alerts the technical contact",
    ["channel", "audience"],
)
CIRCUITS_OPENED = Counter(
    "notify_circuit_opened_total", "Times an endpoint's circuit breaker opened", []
)
SUBSCRIPTIONS_DISABLED = Counter(
    "notify_subscriptions_disabled_total", "Subscriptions disabled by their endpoint (410 Gone)"
)
ALERTS_QUEUED = Counter(
    "notify_dead_letter_alerts_total",
    "Dead-letter alerts: queued as an e-mail to the technical contact, or no contact on file",
    ["outcome"],
)


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
    technical_contact_email: str = "",
) -> Subscription:
    """A webhook (url) or e-mail (email) destination; a webhook gets a new secret.
    The URL and address stored are the normalised ones that were checked."""
    if audience == "technical_contact":
        raise InvalidInput("technical_contact is not a subscription audience")
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
    if technical_contact_email:
        sub.technical_contact_email = domain.check_email_address(technical_contact_email)
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
    if changes.get("technical_contact_email") is not None:
        given = changes["technical_contact_email"]
        fields["technical_contact_email"] = domain.check_email_address(given) if given else ""
    if fields.get("active"):  # resumed by the partner: clear a 410's disabling
        fields.update(disabled_reason="", disabled_at=None)
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


async def remember_clinician(ctx: Notify, event: Any) -> None:
    """`case.accepted`: keep the treating clinician's address (notify's own copy)."""
    if event.treating_clinician_email:
        try:
            email = domain.check_email_address(event.treating_clinician_email)
        except InvalidInput:
            log.warning("case %s: treating clinician address refused", event.case_id)
            return
        await ctx.store.remember_clinician(event.tenant_id, event.case_id, email, ctx.clock.now())


def _delivery(
    ctx: Notify, event: Any, meta: EventMeta, data: dict[str, Any], **fields: Any
) -> Delivery:
    now = ctx.clock.now()
    return Delivery(
        tenant_id=event.tenant_id,
        case_id=event.case_id,
        event_id=meta.event_id,
        event_type=PartnerEventType(event.topic),
        payload={"type": event.topic, "timestamp": meta.time, "data": data},
        traceparent=current_traceparent(),
        next_attempt_at=now,
        lease_until=now,
        created_at=now,
        cycle_started=now,
        **fields,
    )


async def fan_out(ctx: Notify, event: Any, meta: EventMeta) -> int:
    """Create the deliveries for one event; a redelivered event creates none.
    Only the event's own tenant's subscriptions are considered. Links in the
    payload are notify's own (domain.payload_data), never the event's. Each
    subscription's delivery carries that subscription's next sequence number; a
    `report.ready` also goes to the case's treating clinician, if one is known."""
    event_type = event.topic
    data = domain.payload_data(
        event_type, event.model_dump(mode="json"), ctx.settings.public_reporting_url
    )
    created = 0
    for sub in await ctx.store.active_subscriptions(event.tenant_id, event_type):
        delivery_id = domain.delivery_id_for(meta.event_id, sub.id)
        if await ctx.store.delivery_exists(delivery_id):
            continue  # a redelivered event: numbered and stored already
        sequence = await ctx.store.allocate_sequence(sub.id, delivery_id)
        delivery = _delivery(
            ctx,
            event,
            meta,
            data,
            id=delivery_id,
            subscription_id=sub.id,
            channel=sub.channel,
            audience=sub.audience,
            sequence=sequence,
            shard=domain.shard_of(sub.id, ctx.settings.dispatch_workers),
        )
        delivery.payload["sequence"] = sequence
        created += await ctx.store.create_delivery(delivery)
    if event_type == "report.ready":
        email = await ctx.store.clinician_of(event.tenant_id, event.case_id)
        if email:
            delivery_id = domain.clinician_delivery_id(meta.event_id)
            clinician = _delivery(
                ctx,
                event,
                meta,
                data,
                id=delivery_id,
                subscription_id="",
                channel="email",
                audience="treating_clinician",
                recipient=email,
                shard=domain.shard_of(delivery_id, ctx.settings.dispatch_workers),
            )
            created += await ctx.store.create_delivery(clinician)
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
    needs_subscription = delivery.kind == "event" and delivery.subscription_id
    if needs_subscription and (sub is None or not sub.sends):
        why = (sub.disabled_reason if sub else "") or "subscription inactive or removed"
        return AttemptResult(False, False, None, why, 0.0)
    token = attach_traceparent(delivery.traceparent)  # the case's trace
    try:
        return await channels[delivery.channel].send(sub, delivery)
    except PermanentError as exc:
        return AttemptResult(False, False, None, exc.detail, 0.0)
    except Exception as exc:
        log.warning("delivery %s: send failed with %s", delivery.id, type(exc).__name__)
        return AttemptResult(False, True, None, type(exc).__name__, 0.0)
    finally:
        detach(token)


def _finished_event(delivery: Delivery, state: str) -> list[OutboxEntry]:
    if state not in ("delivered", "dead_letter") or delivery.kind != "event":
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


def _breaker_policy(settings: NotifySettings) -> domain.BreakerPolicy:
    return domain.BreakerPolicy(
        settings.breaker_failure_threshold,
        settings.breaker_base_seconds,
        settings.breaker_cap_seconds,
    )


def _lease(settings: NotifySettings) -> float:
    return settings.webhook_timeout_seconds + settings.lease_margin_seconds


CIRCUIT_OPEN_TOO_LONG = "retry window spent while the endpoint's circuit was open"


def _window_spent(ctx: Notify, delivery: Delivery, now: datetime) -> bool:
    started = delivery.cycle_started or delivery.created_at
    return now >= started + timedelta(seconds=ctx.settings.retry_window_seconds)


async def _first_in_line(ctx: Notify, sub: Subscription, delivery: Delivery) -> bool:
    """Whether `delivery` is the endpoint's oldest pending one. If not, the oldest
    is made due now: it is the probe the breaker asks for, whatever its own
    backoff said (else the others would wait, re-checked every lease, until it)."""
    first = await ctx.store.first_pending_sequence(sub.id)
    if first is None or delivery.sequence is None or delivery.sequence <= first:
        return True
    await ctx.store.bring_forward(sub.id, first, ctx.clock.now())
    return False


async def _admitted(
    ctx: Notify, sub: Subscription, delivery: Delivery
) -> Literal["send", "deferred", "expired"]:
    """Whether the endpoint's breaker lets this delivery go now. If not, it is
    given back, due when the breaker next lets one through, or, once its retry
    window is spent, dead-lettered by the caller (never held for ever)."""
    now = ctx.clock.now()
    admit = domain.breaker_admits(sub.breaker, now)
    if admit == "send":
        return "send"
    lease_end = now + timedelta(seconds=_lease(ctx.settings))
    if admit == "probe" and not await _first_in_line(ctx, sub, delivery):
        # The probe is the endpoint's oldest pending delivery, so that what is
        # held is delivered in sequence order once the endpoint is back.
        admit = "hold"
    if admit == "probe" and await ctx.store.begin_probe(sub.id, now, lease_end):
        # This delivery is the probe; the others wait for its outcome.
        await ctx.store.hold_pending(sub.id, lease_end, now, except_id=delivery.id)
        return "send"
    if _window_spent(ctx, delivery, now):
        return "expired"
    until = sub.breaker.retry_at if sub.breaker.state == "open" else None
    await ctx.store.defer(delivery.id, max(until or lease_end, lease_end), now)
    return "deferred"


async def _after_webhook_attempt(
    ctx: Notify, sub: Subscription, result: AttemptResult, next_at: datetime | None
) -> datetime | None:
    """The endpoint's breaker after this attempt (open: hold every pending
    delivery of it until the probe; closed again: release them, in sequence
    order); a 410 disables the subscription. Returns when this delivery is due."""
    now = ctx.clock.now()
    if result.status == 410:
        reason = f"endpoint answered 410 Gone at {now.isoformat()}; disabled"
        await ctx.store.disable_subscription(sub.id, reason, now)
        SUBSCRIPTIONS_DISABLED.inc()
    breaker = domain.breaker_after(_breaker_policy(ctx.settings), sub.breaker, result, now)
    if breaker == sub.breaker:
        return next_at
    await ctx.store.set_breaker(sub.id, breaker, now)
    if breaker.state == "open" and breaker.retry_at is not None:
        if sub.breaker.state == "closed":
            CIRCUITS_OPENED.inc()
            log.warning("endpoint of %s unreachable: circuit open", sub.id)
        await ctx.store.hold_pending(sub.id, breaker.retry_at, now)
        return None if next_at is None else max(next_at, breaker.retry_at)
    if breaker.state == "closed" and sub.breaker.state != "closed":
        await ctx.store.release_pending(sub.id, now)
        return None if next_at is None else now
    return next_at


async def dispatch_one(ctx: Notify, channels: dict[str, Channel], shard: int | None = None) -> bool:
    """Send one due delivery (of `shard`'s subscriptions, or any), if any, or
    raise one pending dead-letter alert; returns whether there was work."""
    settings = ctx.settings
    with quiet():
        delivery = await ctx.store.claim_due(_lease(settings), ctx.clock.now(), shard)
    if delivery is None:
        return await raise_alert(ctx) if shard in (None, 0) else False
    sub = (
        await ctx.store.subscription_by_id(delivery.subscription_id)
        if delivery.subscription_id
        else None
    )
    guarded = (
        sub is not None and delivery.kind == "event" and delivery.channel == "webhook" and sub.sends
    )
    admitted = await _admitted(ctx, sub, delivery) if guarded and sub is not None else "send"
    if admitted == "deferred":
        return True
    log_entries = _interrupted(delivery)
    if admitted == "expired":
        result = AttemptResult(False, False, None, CIRCUIT_OPEN_TOO_LONG, 0.0)
        guarded = False  # nothing was sent: the breaker learns nothing
    else:
        result = await _send(channels, sub, delivery)
    log_entries.append(_attempt(len(delivery.attempts) + len(log_entries) + 1, result, ctx))
    policy = domain.RetryPolicy(
        settings.max_attempts,
        settings.base_backoff_seconds,
        settings.max_backoff_seconds,
        settings.retry_window_seconds,
    )
    cycle = delivery.cycle_attempts + len(log_entries)
    now = ctx.clock.now()
    started = delivery.cycle_started or delivery.created_at
    state, next_at = domain.next_state(policy, cycle, result, now, started)
    if guarded and sub is not None:
        next_at = await _after_webhook_attempt(ctx, sub, result, next_at)
    alert = ""
    if state == "dead_letter":
        DEAD_LETTERS.labels(delivery.channel, delivery.audience).inc()
        log.warning("delivery %s dead-lettered: %s", delivery.id, result.error)
        alert = "pending" if delivery.kind == "event" else ""
    await ctx.store.record_attempt(
        delivery.id,
        log_entries,
        state,
        next_at,
        _finished_event(delivery, state),
        now,
        alert=alert,
    )
    return True


async def raise_alert(ctx: Notify) -> bool:
    """One dead letter's alert: an e-mail to its subscription's technical
    contact, itself a delivery (retried, logged); none on file, the metric and
    the log are the alert. Crash-safe: the dead letter stays `alert: pending`
    until the alert delivery exists, whose id derives from the dead letter's."""
    dead = await ctx.store.next_alert()
    if dead is None:
        return False
    sub = await ctx.store.subscription_by_id(dead.subscription_id) if dead.subscription_id else None
    contact = sub.technical_contact_email if sub is not None else ""
    alert: Delivery | None = None
    if contact and sub is not None:
        now = ctx.clock.now()
        subject, text = domain.dead_letter_alert_message(
            {**dead.model_dump(mode="json"), "_id": dead.id}, sub.id, sub.url or sub.email
        )
        alert = Delivery(
            id=domain.alert_delivery_id(dead.id),
            tenant_id=dead.tenant_id,
            case_id=dead.case_id,
            subscription_id=sub.id,
            kind="dead_letter_alert",
            channel="email",
            audience="technical_contact",
            recipient=contact,
            event_id=dead.event_id,
            event_type=dead.event_type,
            payload={"subject": subject, "text": text},
            next_attempt_at=now,
            lease_until=now,
            created_at=now,
            cycle_started=now,
            shard=0,
        )
    ALERTS_QUEUED.labels("queued" if alert else "no_contact").inc()
    await ctx.store.raise_alert(dead.id, alert, ctx.clock.now())
    return True


async def resend_sequences(ctx: Notify, tenant_id: str, sub_id: str, first: int, last: int) -> int:
    if first < 1 or last < first or last - first > 10_000:
        raise InvalidInput("give 1 <= from_sequence <= to_sequence, at most 10000 apart")
    return await ctx.store.resend_sequences(tenant_id, sub_id, first, last, ctx.clock.now())


async def resend_dead_letters(ctx: Notify, tenant_id: str, sub_id: str) -> int:
    return await ctx.store.resend_dead_letters(tenant_id, sub_id, ctx.clock.now())


async def resend_delivery(ctx: Notify, tenant_id: str, delivery_id: str) -> None:
    await ctx.store.resend_one(tenant_id, delivery_id, ctx.clock.now())

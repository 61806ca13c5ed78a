"""notify's domain, free of I/O: which destinations a tenant may register, which
secrets sign a webhook, the retry schedule, what counts as a retryable failure,
and what a notification e-mail may say (a link, never the clinical content)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel

from services.notify import destinations
from services.notify.destinations import check_email_address
from shared.errors import InvalidInput
from shared.vocabulary import PartnerEventType

__all__ = ["check_email_address"]  # and the rest of the module

# Events a tenant's destinations can subscribe to (all carry case_id + tenant_id).
PARTNER_EVENTS = tuple(str(e) for e in PartnerEventType)
# Who a destination serves: the partner portal's integration, the treating
# clinician (configured per tenant, e.g. the referring clinic's inbox) or the
# patient's portal.
AUDIENCES = ("partner", "treating_clinician", "patient_portal")
CHANNELS = ("webhook", "email")


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of one send on any channel (one row of the delivery log)."""

    ok: bool
    retryable: bool
    status: int | None
    error: str
    latency_ms: float
    retry_after: float | None = None


def delivery_id_for(event_id: str, subscription_id: str) -> str:
    """One logical delivery per event and subscriber: also the `webhook-id`."""
    return "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, f"{event_id}/{subscription_id}").hex


def check_event_types(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(PARTNER_EVENTS))
    if unknown:
        raise InvalidInput(f"unknown event types {unknown}; known: {list(PARTNER_EVENTS)}")
    return sorted(set(event_types))


def check_webhook_url(
    url: str, resolved: list[str], *, production: bool, allow_loopback: bool
) -> str:
    """The normalised URL, if it may be registered: well formed
    (destinations.normalise_webhook_url) and every address its host resolves to
    now is public (loopback only in local development). The dispatcher checks
    again at connect time, on the addresses it connects to (transport.py)."""
    normalised = destinations.normalise_webhook_url(url, production=production)
    destinations.check_addresses(resolved, allow_loopback=allow_loopback and not production)
    return normalised


def report_links(report_id: str, public_reporting_url: str) -> dict[str, str]:
    """Where a partner fetches a report: built here from the report id and the
    configured public address of reporting, never taken from the event (a
    forged `report.ready` must not make us sign a link to anywhere else)."""
    base = f"{public_reporting_url.rstrip('/')}/v1/reports/{quote(report_id, safe='')}"
    return {
        "report": base,
        "fhir": f"{base}/fhir",
        "pdf": f"{base}/pdf",
        "signature": f"{base}/signature",
    }


def payload_data(
    event_type: str, data: dict[str, Any], public_reporting_url: str
) -> dict[str, Any]:
    """The event as delivered: its fields, with links notify built itself."""
    delivered = {k: v for k, v in data.items() if k != "links"}
    if event_type == "report.ready":
        delivered["links"] = report_links(str(data["report_id"]), public_reporting_url)
    return delivered


def retryable_status(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


def parse_retry_after(value: str, now: datetime) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds()) if when.tzinfo else None


def backoff_seconds(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(n-1))];
    a server's Retry-After wins if longer (still capped). `rng` is injected so a
    test gets a reproducible schedule."""
    draw = (rng or random).uniform(0, min(cap, base * 2 ** min(attempt - 1, 30)))
    if retry_after is not None:
        draw = max(draw, min(retry_after, cap))
    return draw


@dataclass(frozen=True)
class RetryPolicy:
    """How long a delivery is retried. The budget is a **time window** from the
    delivery's creation (`window_seconds`, three days by default): full jitter
    makes any one attempt's delay unpredictable, the window does not, so a
    partner outage shorter than the window loses nothing. `max_attempts` (0: no
    limit) is an extra count bound some tests and operators use."""

    max_attempts: int
    base_seconds: float
    cap_seconds: float
    window_seconds: float = 3 * 24 * 3600.0


def next_state(
    policy: RetryPolicy,
    attempts_in_cycle: int,
    result: AttemptResult,
    now: datetime,
    cycle_started: datetime | None = None,
    rng: random.Random | None = None,
) -> tuple[str, datetime | None]:
    """After an attempt: delivered, dead_letter (permanent failure, window or
    count spent), or pending again at the returned time (never past the window's
    end, so the last try is made at the deadline itself)."""
    if result.ok:
        return "delivered", None
    if not result.retryable:
        return "dead_letter", None
    if policy.max_attempts and attempts_in_cycle >= policy.max_attempts:
        return "dead_letter", None
    started = cycle_started or now
    deadline = started + timedelta(seconds=policy.window_seconds)
    if now >= deadline:
        return "dead_letter", None
    delay = backoff_seconds(
        attempts_in_cycle, policy.base_seconds, policy.cap_seconds, result.retry_after, rng
    )
    return "pending", min(now + timedelta(seconds=delay), deadline)


def retry_schedule(
    policy: RetryPolicy, start: datetime, rng: random.Random | None = None
) -> list[datetime]:
    """The instants of every attempt of a delivery that always fails with a
    retryable error, from `start` until it is dead-lettered: what next_state
    does, laid out (docs/notify.md shows it; tests check it spans the window)."""
    failed = AttemptResult(False, True, 503, "HTTP 503", 0.0)
    at, n, times = start, 0, [start]
    while True:
        n += 1
        state, next_at = next_state(policy, n, failed, at, start, rng)
        if state != "pending" or next_at is None:
            return times
        at = next_at
        times.append(at)


# ---------------------------------------------------------------- circuit breaker


@dataclass(frozen=True)
class BreakerPolicy:
    """Per endpoint (subscription): open after `failure_threshold` consecutive
    failed attempts; while open nothing is sent to it; after the open interval
    (exponential with full jitter from `base_seconds`, capped at `cap_seconds`)
    one probe is let through (half-open): success closes it, failure opens it
    again for a longer interval."""

    failure_threshold: int = 5
    base_seconds: float = 30.0
    cap_seconds: float = 3600.0


class Breaker(BaseModel):
    """An endpoint's breaker, stored on its subscription."""

    state: Literal["closed", "open", "half_open"] = "closed"
    failures: int = 0  # consecutive failed attempts
    opened: int = 0  # times opened since it was last closed
    retry_at: datetime | None = None  # open: when the probe may go
    opened_at: datetime | None = None


def breaker_after(
    policy: BreakerPolicy,
    breaker: Breaker,
    result: AttemptResult,
    now: datetime,
    rng: random.Random | None = None,
) -> Breaker:
    """The breaker after one attempt to its endpoint. Only a failure of the
    endpoint counts (timeouts, connection errors, 5xx, 408/425/429); a
    permanent refusal of one message (400, 422) says the endpoint is up."""
    if result.ok or not result.retryable:
        return Breaker()
    failures = breaker.failures + 1
    if breaker.state == "closed" and failures < policy.failure_threshold:
        return breaker.model_copy(update={"failures": failures})
    opened = breaker.opened + 1
    delay = backoff_seconds(
        opened, policy.base_seconds, policy.cap_seconds, result.retry_after, rng
    )
    # A probe never waits less than the base interval: full jitter may draw ~0.
    delay = max(delay, min(policy.base_seconds, policy.cap_seconds))
    return Breaker(
        state="open",
        failures=failures,
        opened=opened,
        retry_at=now + timedelta(seconds=delay),
        opened_at=breaker.opened_at or now,
    )


def breaker_admits(breaker: Breaker, now: datetime) -> Literal["send", "probe", "hold"]:
    """May a delivery go to this endpoint now? `probe`: it is the one attempt a
    half-open breaker lets through."""
    if breaker.state == "closed":
        return "send"
    if breaker.state == "open" and breaker.retry_at is not None and now >= breaker.retry_at:
        return "probe"
    return "hold"


_SUBJECTS = {
    "report.ready": "Second-opinion report ready",
    "case.rejected": "Second-opinion request could not be accepted",
    "records.incomplete": "Second-opinion request: records still missing",
    "sla.breached": "Second-opinion review delayed",
}


def email_message(event_type: str, data: dict[str, Any], base_url: str) -> tuple[str, str]:
    """Subject and body of a notification e-mail. E-mail is not a safe carrier
    for PHI: say that something happened and link to it (behind authentication).
    The link is built from the report id, whatever the stored payload says."""
    subject = _SUBJECTS.get(event_type, "Second-opinion case update")
    lines = [f"{subject}.", "", f"Case reference: {data.get('case_id', '')}"]
    if event_type == "report.ready" and data.get("report_id"):
        link = report_links(str(data["report_id"]), base_url)["report"]
        lines.append(f"View the report (sign-in required): {link}")
    lines += ["", "This message contains no clinical details; sign in to see them."]
    return subject, "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the treating clinician

# How a tenant's treating clinicians receive a report (NOTIFY_CLINICIAN_REPORT_POLICY):
# "link" (the default: a link behind sign-in, no clinical content in the mail) or
# "attachment" (the signed PDF attached; only over a relay reached with STARTTLS).
ClinicianPolicy = Literal["link", "attachment"]


def clinician_delivery_id(event_id: str) -> str:
    """One clinician e-mail per report.ready event."""
    return delivery_id_for(event_id, "treating_clinician")


def clinician_message(
    data: dict[str, Any], base_url: str, policy: ClinicianPolicy
) -> tuple[str, str]:
    """Subject and body of the e-mail to the treating clinician. With the
    attachment policy the PDF travels as an attachment; the text still names no
    patient or finding (a subject line is read by many eyes)."""
    link = report_links(str(data.get("report_id", "")), base_url)["report"]
    lines = [
        "The independent second opinion you requested for your patient is ready.",
        "",
        f"Case reference: {data.get('case_id', '')}",
    ]
    if policy == "attachment":
        lines.append("The signed report is attached (PDF).")
    lines += [f"The report online (sign-in required): {link}", ""]
    lines.append("This message is for the treating clinician named in the request.")
    return "Second-opinion report ready", "\n".join(lines) + "\n"


# ---------------------------------------------------------------- dead-letter alerts


def alert_delivery_id(delivery_id: str) -> str:
    return delivery_id_for(delivery_id, "dead_letter_alert")


def dead_letter_alert_message(
    delivery: dict[str, Any], subscription_id: str, url: str
) -> tuple[str, str]:
    """The e-mail to a partner's technical contact when a delivery to its
    endpoint is dead-lettered: what, where, why and how to get it again. Ids and
    the error only (no event content)."""
    attempts = delivery.get("attempts") or []
    last = attempts[-1] if attempts else {}
    seq = delivery.get("sequence")
    lines = [
        "A webhook delivery to your endpoint could not be made and was dead-lettered.",
        "",
        f"Subscription: {subscription_id}",
        f"Endpoint: {url}",
        f"Delivery (webhook-id): {delivery.get('_id', '')}",
        f"Event type: {delivery.get('event_type', '')}",
        f"Sequence number: {seq if seq is not None else '-'}",
        f"Attempts: {len(attempts)}; last error: {last.get('error') or last.get('status') or '-'}",
        "",
        "Once your endpoint is back, resend it (same webhook-id) with",
        f"  POST /v1/deliveries/{delivery.get('_id', '')}/resend",
        "or every dead letter of the subscription with",
        f"  POST /v1/subscriptions/{subscription_id}/resend-dead-letters",
    ]
    return f"Webhook delivery dead-lettered ({subscription_id})", "\n".join(lines) + "\n"


def shard_of(subscription_id: str, shards: int) -> int:
    """The dispatcher worker of a subscription (stable across processes)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, subscription_id).int % max(1, shards)

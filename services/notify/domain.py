"""notify's domain, free of I/O: which destinations a tenant may register, which
secrets sign a webhook, the retry schedule, what counts as a retryable failure,
and what a notification e-mail may say (a link, never the clinical content)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

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
    attempt: int, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins if longer."""
    delay = random.uniform(0, min(cap, base * 2 ** min(attempt - 1, 30)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    cap_seconds: float


def next_state(
    policy: RetryPolicy, attempts_in_cycle: int, result: AttemptResult, now: datetime
) -> tuple[str, datetime | None]:
    """After an attempt: delivered, dead_letter (permanent failure or budget
    spent), or pending again at the returned time."""
    if result.ok:
        return "delivered", None
    if not result.retryable or attempts_in_cycle >= policy.max_attempts:
        return "dead_letter", None
    delay = backoff_seconds(
        attempts_in_cycle, policy.base_seconds, policy.cap_seconds, result.retry_after
    )
    return "pending", now + timedelta(seconds=delay)


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

"""notify's domain, free of I/O: which destinations a tenant may register, which
secrets sign a webhook, the retry schedule, what counts as a retryable failure,
and what a notification e-mail may say (a link, never the clinical content)."""

from __future__ import annotations

import ipaddress
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from shared.errors import InvalidInput, UnregisteredEndpoint

# Events a tenant's destinations can subscribe to (all carry case_id + tenant_id).
PARTNER_EVENTS = ("report.ready", "case.rejected", "records.incomplete", "sla.breached")
# Who a destination serves: the partner portal's integration, the treating
# clinician (configured per tenant, e.g. the referring clinic's inbox) or the
# patient's portal.
AUDIENCES = ("partner", "treating_clinician", "patient_portal")
CHANNELS = ("webhook", "email")
_EMAIL = re.compile(r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")


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


def check_email_address(address: str) -> str:
    if not _EMAIL.match(address):
        raise InvalidInput("not a plain e-mail address")
    return address


def check_webhook_url(
    url: str, resolved: list[str], *, production: bool, allow_loopback: bool
) -> None:
    """Refuse URLs that would make us call into private networks (SSRF).

    `resolved` are the addresses the host name resolves to now; every one of
    them must be public (or loopback, in local development only).
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        raise UnregisteredEndpoint("webhook URL is malformed") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnregisteredEndpoint("webhook URL must be an absolute http(s) URL")
    if production and parts.scheme != "https":
        raise UnregisteredEndpoint("webhook URL must use https")
    if parts.username or parts.password:
        raise UnregisteredEndpoint("webhook URL must not carry credentials")
    if not resolved:
        raise UnregisteredEndpoint("webhook host does not resolve")
    for addr in resolved:
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback and allow_loopback and not production:
            continue
        if not ip.is_global or ip.is_multicast:
            raise UnregisteredEndpoint(f"webhook host resolves to a non-public address ({ip})")


def signing_secrets(sub: dict[str, Any], now: datetime) -> list[str]:
    """The current secret, plus rotated-out ones still in their grace period: the
    partner verifies if any one signature matches, so a rotation breaks nobody."""
    previous = [p["secret"] for p in sub.get("previous_secrets", []) if p["expires_at"] > now]
    return [sub["secret"], *previous]


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
    for PHI: say that something happened and link to it (behind authentication)."""
    subject = _SUBJECTS.get(event_type, "Second-opinion case update")
    lines = [f"{subject}.", "", f"Case reference: {data.get('case_id', '')}"]
    link = (data.get("links") or {}).get("report", "")
    if link:
        lines.append(f"View the report (sign-in required): {absolute_link(link, base_url)}")
    lines += ["", "This message contains no clinical details; sign in to see them."]
    return subject, "\n".join(lines) + "\n"


def absolute_link(link: str, base_url: str) -> str:
    return base_url.rstrip("/") + link if link.startswith("/") and base_url else link

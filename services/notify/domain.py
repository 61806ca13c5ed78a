"""notify's domain, free of I/O: which URLs a partner may register, the retry
schedule, and what counts as a retryable delivery failure."""

from __future__ import annotations

import ipaddress
import random
import uuid
from urllib.parse import urlsplit

from shared.errors import UnregisteredEndpoint


def delivery_id_for(event_id: str, subscription_id: str) -> str:
    """One logical delivery per event and subscriber: also the `webhook-id`."""
    return "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, f"{event_id}/{subscription_id}").hex


def check_webhook_url(
    url: str, resolved: list[str], *, production: bool, allow_loopback: bool
) -> None:
    """Refuse URLs that would make us call into private networks (SSRF).

    `resolved` are the addresses the host name resolves to now; every one of
    them must be public (or loopback, in local development only).
    """
    parts = urlsplit(url)
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


def retryable_status(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


def backoff_seconds(
    attempt: int, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins if longer."""
    delay = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay

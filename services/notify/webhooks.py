"""The webhook channel: Standard Webhooks signing and one HTTP attempt."""

from __future__ import annotations

import asyncio
import secrets
import time
from base64 import b64encode
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from services.notify import domain
from services.notify.domain import AttemptResult

__all__ = ["AttemptResult", "new_secret", "now", "post", "resolve", "signed_headers"]


def new_secret() -> str:
    return "whsec_" + b64encode(secrets.token_bytes(32)).decode()


def signed_headers(
    secret: str | list[str], delivery_id: str, body: str, at: datetime
) -> dict[str, str]:
    """Standard Webhooks headers; several secrets (during a rotation's grace
    period) give several space-separated signatures, any one of which verifies."""
    keys = [secret] if isinstance(secret, str) else secret
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(Webhook(k).sign(delivery_id, at, body) for k in keys),
        "content-type": "application/json",
    }


async def resolve(url: str) -> list[str]:
    # A malformed URL ("http://[::1") or host (over-long IDNA label, NUL) is a
    # ValueError: it resolves to nothing, which check_webhook_url refuses.
    try:
        host = urlsplit(url).hostname or ""
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except (OSError, ValueError):
        return []
    return sorted({str(info[4][0]) for info in infos})


async def post(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: str
) -> AttemptResult:
    started = time.perf_counter()
    try:
        resp = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:  # timeouts and connection failures: worth another try
        elapsed = (time.perf_counter() - started) * 1000
        return AttemptResult(False, True, None, type(exc).__name__, elapsed)
    elapsed = (time.perf_counter() - started) * 1000
    ok = 200 <= resp.status_code < 300
    return AttemptResult(
        ok,
        not ok and domain.retryable_status(resp.status_code),
        resp.status_code,
        "" if ok else f"HTTP {resp.status_code}",
        elapsed,
        domain.parse_retry_after(resp.headers.get("retry-after", ""), now()),
    )


def now() -> datetime:
    return datetime.now(UTC)

"""The webhook channel: Standard Webhooks signing and one HTTP attempt."""

from __future__ import annotations

import secrets
import time
from base64 import b64encode
from datetime import datetime

import httpx
from standardwebhooks import Webhook

from services.notify import domain
from services.notify.domain import AttemptResult
from shared.errors import UnregisteredEndpoint

__all__ = ["AttemptResult", "new_secret", "post", "signed_headers"]


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


async def post(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: str, now: datetime
) -> AttemptResult:
    """One attempt; never raises. Timeouts and connection failures are worth
    another try; a refused address or a URL httpx cannot send is not; anything
    else unexpected is retried (within the attempt budget) rather than raised,
    so one delivery's failure never stalls the dispatcher."""
    started = time.perf_counter()

    def failed(retryable: bool, error: str) -> AttemptResult:
        return AttemptResult(False, retryable, None, error, (time.perf_counter() - started) * 1000)

    try:
        resp = await client.post(url, content=body, headers=headers)
    except UnregisteredEndpoint as exc:  # the connect-time SSRF check
        return failed(False, exc.detail)
    except httpx.HTTPError as exc:
        return failed(True, type(exc).__name__)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:  # can never be sent
        return failed(False, type(exc).__name__)
    except Exception as exc:
        return failed(True, type(exc).__name__)
    elapsed = (time.perf_counter() - started) * 1000
    ok = 200 <= resp.status_code < 300
    return AttemptResult(
        ok,
        not ok and domain.retryable_status(resp.status_code),
        resp.status_code,
        "" if ok else f"HTTP {resp.status_code}",
        elapsed,
        domain.parse_retry_after(resp.headers.get("retry-after", ""), now),
    )

"""Delivery channels: one interface, `send(subscription, delivery)`, with a
webhook channel (signed HTTP POST) and an e-mail channel (SMTP). Each returns
an `AttemptResult` and never raises for a failed send: the dispatcher turns
the result into the delivery log and the retry schedule."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from email.message import EmailMessage
from typing import Protocol

import httpx

from services.notify import domain, webhooks
from services.notify.domain import AttemptResult
from services.notify.settings import NotifySettings
from shared.errors import UnregisteredEndpoint
from shared.store import Doc


class Channel(Protocol):
    async def send(self, sub: Doc, delivery: Doc) -> AttemptResult: ...


async def validate_url(url: str, settings: NotifySettings) -> None:
    domain.check_webhook_url(
        url,
        await webhooks.resolve(url),
        production=not settings.dev_mode,
        allow_loopback=settings.allow_loopback_webhooks,
    )


def webhook_body(delivery: Doc) -> str:
    return json.dumps(delivery["payload"], separators=(",", ":"), sort_keys=True)


class WebhookChannel:
    def __init__(self, client: httpx.AsyncClient, settings: NotifySettings) -> None:
        self.client = client
        self.settings = settings

    async def send(self, sub: Doc, delivery: Doc) -> AttemptResult:
        try:
            await validate_url(sub["url"], self.settings)  # again: DNS may have changed
        except UnregisteredEndpoint as exc:
            return AttemptResult(False, False, None, exc.detail, 0.0)
        at = webhooks.now()
        body = webhook_body(delivery)
        keys = domain.signing_secrets(sub, at)
        headers = webhooks.signed_headers(keys, delivery["_id"], body, at)
        return await webhooks.post(self.client, sub["url"], headers, body)


class EmailChannel:
    """Plain-text mail through the configured relay; the message holds a link,
    never clinical content (domain.email_message)."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    async def send(self, sub: Doc, delivery: Doc) -> AttemptResult:
        payload = delivery["payload"]
        subject, text = domain.email_message(
            payload["type"], payload["data"], self.settings.public_reporting_url
        )
        msg = EmailMessage()
        msg["From"] = self.settings.email_from
        msg["To"] = sub["email"]
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{delivery['_id']}@second-opinion.notify>"  # stable on retries
        msg.set_content(text)
        started = time.perf_counter()
        result = await asyncio.to_thread(self._send_blocking, msg)
        elapsed = (time.perf_counter() - started) * 1000
        return AttemptResult(result[0], result[1], result[2], result[3], elapsed)

    def _send_blocking(self, msg: EmailMessage) -> tuple[bool, bool, int | None, str]:
        s = self.settings
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password)
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code = min(c for c, _ in exc.recipients.values())
            return False, 400 <= code < 500, code, f"SMTP {code} recipient refused"
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
            return False, 400 <= code < 500, code, f"SMTP {code}"
        except (OSError, smtplib.SMTPException) as exc:  # relay down or unreachable
            return False, True, None, type(exc).__name__
        return True, False, 250, ""

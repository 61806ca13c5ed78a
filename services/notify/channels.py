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

from services.notify import domain, transport, webhooks
from services.notify.domain import AttemptResult
from services.notify.models import Delivery, Subscription
from services.notify.settings import NotifySettings
from shared.clock import Clock
from shared.errors import UnregisteredEndpoint


class Channel(Protocol):
    async def send(self, sub: Subscription, delivery: Delivery) -> AttemptResult: ...


def production(settings: NotifySettings) -> bool:
    return not settings.dev_mode


def allow_loopback(settings: NotifySettings) -> bool:
    return settings.allow_loopback_webhooks and settings.dev_mode


async def validate_url(
    url: str, settings: NotifySettings, resolver: transport.Resolver = transport.resolve
) -> str:
    """The normalised URL a tenant may register (UnregisteredEndpoint if not)."""
    normalised = domain.destinations.normalise_webhook_url(url, production=production(settings))
    parsed = httpx.URL(normalised)
    return domain.check_webhook_url(
        normalised,
        await resolver(parsed.raw_host.decode("ascii"), parsed.port or 443),
        production=production(settings),
        allow_loopback=allow_loopback(settings),
    )


def webhook_body(delivery: Delivery) -> str:
    return json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True)


class WebhookChannel:
    """Signed POSTs on a client whose connections are SSRF-checked where they
    are opened (transport.webhook_client)."""

    def __init__(self, client: httpx.AsyncClient, settings: NotifySettings, clock: Clock) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock

    async def send(self, sub: Subscription, delivery: Delivery) -> AttemptResult:
        try:  # a URL stored before normalisation existed, or a setting changed since
            url = domain.destinations.normalise_webhook_url(
                sub.url, production=production(self.settings)
            )
        except UnregisteredEndpoint as exc:
            return AttemptResult(False, False, None, exc.detail, 0.0)
        at = self.clock.now()
        body = webhook_body(delivery)
        headers = webhooks.signed_headers(sub.signing_secrets(at), delivery.id, body, at)
        return await webhooks.post(self.client, url, headers, body, at)


class EmailChannel:
    """Plain-text mail through the configured relay; the message holds a link,
    never clinical content (domain.email_message)."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    async def send(self, sub: Subscription, delivery: Delivery) -> AttemptResult:
        payload = delivery.payload
        subject, text = domain.email_message(
            payload["type"], payload["data"], self.settings.public_reporting_url
        )
        msg = EmailMessage()
        msg["From"] = self.settings.email_from
        msg["To"] = domain.check_email_address(sub.email)  # again: stored before the check
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{delivery.id}@second-opinion.notify>"  # stable on retries
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


def default_channels(
    settings: NotifySettings, clock: Clock
) -> tuple[dict[str, Channel], httpx.AsyncClient]:
    client = transport.webhook_client(
        settings.webhook_timeout_seconds, allow_loopback=allow_loopback(settings)
    )
    channels: dict[str, Channel] = {
        "webhook": WebhookChannel(client, settings, clock),
        "email": EmailChannel(settings),
    }
    return channels, client

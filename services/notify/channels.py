"""Delivery channels: one interface, `send(subscription, delivery)`, with a
webhook channel (signed HTTP POST) and an e-mail channel (SMTP). Each returns
an `AttemptResult` and never raises for a failed send: the dispatcher turns
the result into the delivery log and the retry schedule."""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
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
    """One way of delivering. `sub` is None for a delivery addressed without a
    subscription (the treating clinician's e-mail, a dead-letter alert).

    Further channels plug in here, each a class with this one method, registered
    in `default_channels` under the name a delivery's `channel` holds: Direct
    secure messaging (an XDM package to the clinician's Direct address through a
    HISP) and a FHIR `Communication` to the clinician's organisation's endpoint
    (the report's DiagnosticReport as payload) are the two documented ones
    (docs/notify.md, "Other channels"); neither exists yet, and `Delivery.channel`
    refuses their names until one does."""

    async def send(self, sub: Subscription | None, delivery: Delivery) -> AttemptResult: ...


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

    async def send(self, sub: Subscription | None, delivery: Delivery) -> AttemptResult:
        if sub is None:
            return AttemptResult(False, False, None, "webhook delivery without subscription", 0.0)
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
    """Mail through the configured relay, with STARTTLS (required outside
    DEV_MODE, verified against the system's or `smtp_ca_file`'s CAs). A partner
    or portal address gets a link, never clinical content
    (domain.email_message); the treating clinician gets the report as the
    tenant's policy says (a link, or the signed PDF fetched from reporting with
    notify's service credential); a technical contact gets the dead-letter alert."""

    def __init__(self, settings: NotifySettings, reports: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.reports = reports

    async def send(self, sub: Subscription | None, delivery: Delivery) -> AttemptResult:
        started = time.perf_counter()
        try:
            msg = await self._message(sub, delivery)
        except _FetchFailed as exc:
            elapsed = (time.perf_counter() - started) * 1000
            return AttemptResult(False, exc.retryable, exc.status, exc.detail, elapsed)
        result = await asyncio.to_thread(self._send_blocking, msg)
        elapsed = (time.perf_counter() - started) * 1000
        return AttemptResult(result[0], result[1], result[2], result[3], elapsed)

    async def _message(self, sub: Subscription | None, delivery: Delivery) -> EmailMessage:
        payload = delivery.payload
        to = delivery.recipient or (sub.email if sub is not None else "")
        attachment: bytes | None = None
        if delivery.kind == "dead_letter_alert":
            subject, text = str(payload["subject"]), str(payload["text"])
        elif delivery.audience == "treating_clinician" and not delivery.subscription_id:
            policy = self.settings.clinician_policy(delivery.tenant_id)
            subject, text = domain.clinician_message(
                payload["data"], self.settings.public_reporting_url, policy
            )
            if policy == "attachment":
                attachment = await self._report_pdf(str(payload["data"]["report_id"]))
        else:
            subject, text = domain.email_message(
                payload["type"], payload["data"], self.settings.public_reporting_url
            )
        msg = EmailMessage()
        msg["From"] = self.settings.email_from
        msg["To"] = domain.check_email_address(to)  # again: stored before the check
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{delivery.id}@second-opinion.notify>"  # stable on retries
        msg.set_content(text)
        if attachment is not None:
            name = f"second-opinion-{delivery.case_id}.pdf"
            msg.add_attachment(attachment, maintype="application", subtype="pdf", filename=name)
        return msg

    async def _report_pdf(self, report_id: str) -> bytes:
        """The signed report's PDF from reporting's API (notify's own credential)."""
        if self.reports is None or not self.settings.reporting_api_key:
            raise _FetchFailed(False, None, "no reporting credential for the PDF")
        url = domain.report_links(report_id, self.settings.reporting_url)["pdf"]
        headers = {"authorization": f"Bearer {self.settings.reporting_api_key}"}
        try:
            resp = await self.reports.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise _FetchFailed(True, None, f"report PDF: {type(exc).__name__}") from None
        if resp.status_code != 200 or resp.headers.get("content-type") != "application/pdf":
            code = resp.status_code
            raise _FetchFailed(domain.retryable_status(code), code, f"report PDF: HTTP {code}")
        return resp.content

    def tls_context(self) -> ssl.SSLContext:
        cafile = str(self.settings.smtp_ca_file) if self.settings.smtp_ca_file else None
        return ssl.create_default_context(cafile=cafile)

    def _send_blocking(self, msg: EmailMessage) -> tuple[bool, bool, int | None, str]:
        s = self.settings
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=self.tls_context())
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password)
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code = min(c for c, _ in exc.recipients.values())
            return False, 400 <= code < 500, code, f"SMTP {code} recipient refused"
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
            return False, 400 <= code < 500, code, f"SMTP {code}"
        except ssl.SSLError as exc:  # a relay whose certificate does not verify
            return False, True, None, f"TLS: {exc.reason or type(exc).__name__}"
        except (OSError, smtplib.SMTPException) as exc:  # relay down or unreachable
            return False, True, None, type(exc).__name__
        return True, False, 250, ""


class _FetchFailed(Exception):
    def __init__(self, retryable: bool, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.retryable, self.status, self.detail = retryable, status, detail


def default_channels(
    settings: NotifySettings, clock: Clock
) -> tuple[dict[str, Channel], list[httpx.AsyncClient]]:
    client = transport.webhook_client(
        settings.webhook_timeout_seconds, allow_loopback=allow_loopback(settings)
    )
    # reporting is inside the cluster (a private address the webhook client's
    # SSRF guard refuses): its own client, used only for the configured URL.
    reports = httpx.AsyncClient(
        timeout=settings.webhook_timeout_seconds,
        trust_env=False,
        follow_redirects=False,
        headers={"user-agent": transport.user_agent()},
    )
    channels: dict[str, Channel] = {
        "webhook": WebhookChannel(client, settings, clock),
        "email": EmailChannel(settings, reports),
    }
    return channels, [client, reports]

"""notify's delivery against real local HTTP and SMTP receivers and the real
database: signatures, retries to one logical delivery, dead letters and resend,
Retry-After, no retry on other 4xx, secret rotation, the SSRF guard, the
e-mail channel and tenant isolation of the fan-out."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from pymongo.asynchronous.database import AsyncDatabase
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.notify import handlers, transport, webhooks
from services.notify.channels import Channel, EmailChannel, WebhookChannel
from services.notify.handlers import Notify
from services.notify.models import Delivery, Subscription
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.clock import ManualClock
from shared.envelope import EventMeta
from shared.errors import NotFound, UnregisteredEndpoint
from shared.events import ReportLinks, ReportReady, SlaBreached
from shared.store import Doc


class Receiver:
    """A partner endpoint on loopback answering with the given (status, headers)
    in turn, then 204; `hold` (if set) blocks the first request's answer until set."""

    def __init__(self, statuses: list[int | tuple[int, dict[str, str]]] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.hold: threading.Event | None = None
        self.got_request = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                outer.got_request.set()
                hold, outer.hold = outer.hold, None
                if hold is not None:
                    hold.wait(30)
                answer = outer.statuses.pop(0) if outer.statuses else 204
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                except OSError:  # the sender is gone (killed while we held the answer)
                    pass

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def webhook_ids(self) -> list[str]:
        return [h["webhook-id"] for h, _ in self.requests]


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.server.shutdown()


def receiver(made: list[Receiver], statuses: list[Any] | None = None) -> Receiver:
    r = Receiver(statuses)
    made.append(r)
    return r


def ready_event(
    tenant: str = "t1", case_id: str = "case-1", report_link: str = "/v1/reports/r1"
) -> ReportReady:
    return ReportReady(
        case_id=case_id,
        tenant_id=tenant,
        report_id="r1",
        reviewer_id="rev",
        concordance="confirmed",
        signed_at="2026-11-20T10:00:00Z",
        content_sha256="0" * 64,
        links=ReportLinks(report=report_link),
    )


def meta(tenant: str = "t1") -> EventMeta:
    return EventMeta(
        str(uuid.uuid4()), ReportReady.ce_type(), "/it", "2026-11-20T10:00:00Z", tenant
    )


def fast(**overrides: Any) -> NotifySettings:
    """Development settings (loopback receivers) with second-long backoff: the
    tests move their ManualClock past each retry."""
    return NotifySettings(
        **{"dev_mode": True, "base_backoff_seconds": 1, "max_backoff_seconds": 5, **overrides}
    )


@pytest_asyncio.fixture(loop_scope="session")
async def env(db: AsyncDatabase[Doc]) -> AsyncIterator[tuple[NotifyStore, httpx.AsyncClient]]:
    store = NotifyStore(db["subscriptions"], db["deliveries"])
    await store.create_indexes()
    async with transport.webhook_client(5, allow_loopback=True) as client:
        yield store, client


def notify(store: NotifyStore, settings: NotifySettings) -> Notify:
    """Handlers on a ManualClock at the real time (Webhook.verify checks the
    signature's timestamp against the real clock), whole seconds: Mongo keeps ms."""
    return Notify(store, settings, ManualClock(datetime.now(UTC).replace(microsecond=0)))


async def run_until_done(ctx: Notify, channels: dict[str, Channel], n: int = 1) -> list[Doc]:
    """Dispatch until `n` deliveries are finished, moving the clock past each
    retry's backoff when nothing is due (bounded)."""
    assert isinstance(ctx.clock, ManualClock)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not await handlers.dispatch_one(ctx, channels):
            ctx.clock.advance(timedelta(seconds=ctx.settings.max_backoff_seconds))
        docs = await ctx.store.deliveries.find({"state": {"$ne": "pending"}}).to_list()
        if len(docs) >= n:
            return docs
    raise AssertionError("deliveries not finished in time")


def webhook_only(ctx: Notify, client: httpx.AsyncClient) -> dict[str, Channel]:
    return {"webhook": WebhookChannel(client, ctx.settings, ctx.clock)}


async def test_failing_receiver_gets_one_logical_signed_delivery(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx = receiver(receivers, [500, 503, 500])
    ctx = notify(store, fast())
    sub = await handlers.create_subscription(ctx, "t1", rx.url, ["report.ready"])
    m = meta()
    assert await handlers.fan_out(ctx, ready_event(), m) == 1
    assert await handlers.fan_out(ctx, ready_event(), m) == 0  # redelivered: no second one
    [doc] = await run_until_done(ctx, webhook_only(ctx, client))
    assert doc["state"] == "delivered"
    assert [a["status"] for a in doc["attempts"]] == [500, 503, 500, 204]
    assert all(a["latency_ms"] >= 0 and a["at"] for a in doc["attempts"])
    assert [a["error"] for a in doc["attempts"]][:1] == ["HTTP 500"]
    assert rx.webhook_ids() == [doc["_id"]] * 4  # same webhook-id on every retry
    headers, body = rx.requests[-1]
    assert Webhook(sub.secret).verify(body, headers)["data"]["case_id"] == "case-1"
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # tampered body
        Webhook(sub.secret).verify(body.replace(b"case-1", b"case-2"), headers)
    assert [e["topic"] for e in doc["outbox"]] == ["notification.delivered"]
    assert headers["user-agent"].startswith("second-opinion-router-notify/")


async def test_dead_letter_then_resend_after_recovery(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx = receiver(receivers, [503] * 3)
    ctx = notify(store, fast(max_attempts=3))
    sub = await handlers.create_subscription(ctx, "t1", rx.url, ["report.ready"])
    await handlers.fan_out(ctx, ready_event(), meta())
    [doc] = await run_until_done(ctx, webhook_only(ctx, client))
    assert doc["state"] == "dead_letter" and len(doc["attempts"]) == 3
    assert doc["outbox"][0]["body"]["status"] == "dead_letter"
    # The receiver has recovered (answers 204 from now on): resend all dead letters.
    assert await handlers.resend_dead_letters(ctx, "t1", sub.id) == 1
    assert await handlers.resend_dead_letters(ctx, "t1", sub.id) == 0  # none left
    await store.deliveries.update_one({"_id": doc["_id"]}, {"$set": {"outbox": []}})
    [doc] = await run_until_done(ctx, webhook_only(ctx, client))
    assert doc["state"] == "delivered" and doc["resends"] == 1
    assert [a["status"] for a in doc["attempts"]] == [503, 503, 503, 204]
    assert set(rx.webhook_ids()) == {doc["_id"]}
    Webhook(sub.secret).verify(rx.requests[-1][1], rx.requests[-1][0])


async def test_retry_after_is_honoured_and_other_4xx_not_retried(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    ctx = notify(store, fast(max_backoff_seconds=600))
    limited = receiver(receivers, [(429, {"Retry-After": "120"})])
    gone = receiver(receivers, [410])
    for r in (limited, gone):
        await handlers.create_subscription(ctx, "t1", r.url, ["report.ready"])
    await handlers.fan_out(ctx, ready_event(), meta())
    channels = webhook_only(ctx, client)
    before = ctx.clock.now()
    while await handlers.dispatch_one(ctx, channels):
        pass
    throttled = await store.deliveries.find_one({"attempts.status": 429})
    refused = await store.deliveries.find_one({"attempts.status": 410})
    assert throttled is not None and refused is not None
    assert throttled["state"] == "pending"
    assert (throttled["next_attempt_at"] - before).total_seconds() >= 120
    assert refused["state"] == "dead_letter" and len(refused["attempts"]) == 1
    assert len(gone.requests) == 1


async def test_rotated_secret_signs_with_both_during_grace(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx = receiver(receivers)
    ctx = notify(store, fast())
    sub = await handlers.create_subscription(ctx, "t1", rx.url, ["report.ready"])
    rotated = await handlers.rotate_secret(ctx, "t1", sub.id, grace_seconds=3600)
    assert rotated.secret != sub.secret
    await handlers.fan_out(ctx, ready_event(), meta())
    await run_until_done(ctx, webhook_only(ctx, client))
    headers, body = rx.requests[-1]
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (sub.secret, rotated.secret):
        Webhook(secret).verify(body, headers)
    # A rotation without grace drops no grace entry early: the earlier one stays
    # until it expires.
    final = await handlers.rotate_secret(ctx, "t1", sub.id, grace_seconds=0)
    assert final.previous_secrets == rotated.previous_secrets
    await store.subscriptions.update_one({"_id": sub.id}, {"$set": {"previous_secrets": []}})
    await handlers.fan_out(ctx, ready_event(), meta())
    await run_until_done(ctx, webhook_only(ctx, client), n=2)
    headers, body = rx.requests[-1]
    Webhook(final.secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(sub.secret).verify(body, headers)


async def test_metadata_and_private_urls_refused(db: AsyncDatabase[Doc]) -> None:
    store = NotifyStore(db["subscriptions"], db["deliveries"])
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook"):
        with pytest.raises(UnregisteredEndpoint):
            await handlers.create_subscription(notify(store, fast()), "t1", url, ["report.ready"])
    with pytest.raises(UnregisteredEndpoint, match="https"):  # production mode: https only
        await handlers.create_subscription(
            notify(store, fast(dev_mode=False)), "t1", "http://127.0.0.1:9/h", ["report.ready"]
        )
    assert await store.subscriptions.count_documents({}) == 0


async def test_tenant_b_never_sees_tenant_a_events(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx_a, rx_b = receiver(receivers), receiver(receivers)
    ctx = notify(store, fast())
    await handlers.create_subscription(ctx, "tenant-a", rx_a.url, ["report.ready"])
    await handlers.create_subscription(ctx, "tenant-b", rx_b.url, ["report.ready"])
    await handlers.fan_out(ctx, ready_event("tenant-a", "case-a"), meta("tenant-a"))
    docs = await run_until_done(ctx, webhook_only(ctx, client))
    assert [d["tenant_id"] for d in docs] == ["tenant-a"]
    assert len(rx_a.requests) == 1 and rx_b.requests == []
    assert await store.list_deliveries("tenant-b", {}, 10) == []
    [listed] = await store.list_deliveries("tenant-a", {}, 10)
    shown = listed.view()
    assert shown["delivery_id"] == docs[0]["_id"] and shown["state"] == "delivered"
    assert shown["payload"] == {} and "lease_until" not in shown  # left out of listings


class Exploding:
    """A channel whose send raises what no channel is meant to: the dispatcher
    must still record it as that delivery's failed attempt."""

    def __init__(self, inner: Channel, tenant: str, error: Exception) -> None:
        self.inner, self.tenant, self.error, self.calls = inner, tenant, error, 0

    async def send(self, sub: Subscription | None, delivery: Delivery) -> Any:
        if sub is not None and sub.tenant_id == self.tenant:
            self.calls += 1
            raise self.error
        return await self.inner.send(sub, delivery)


@pytest.mark.parametrize(
    "error", [httpx.InvalidURL("Invalid non-printable ASCII character"), RuntimeError("boom")]
)
async def test_a_delivery_that_raises_fails_alone_and_other_tenants_are_delivered(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver], error: Exception
) -> None:
    """Issue 15 finding 5: an exception while sending one delivery used to stop
    the dispatcher's round; the delivery stayed leased and was re-claimed every
    lease, for ever, ahead of every other tenant's deliveries."""
    store, client = env
    ctx = notify(store, fast(max_attempts=3))
    bad, good = receiver(receivers), receiver(receivers)
    await handlers.create_subscription(ctx, "tenant-bad", bad.url, ["report.ready"])
    await handlers.create_subscription(ctx, "tenant-good", good.url, ["report.ready"])
    await handlers.fan_out(ctx, ready_event("tenant-bad", "case-bad"), meta("tenant-bad"))
    await handlers.fan_out(ctx, ready_event("tenant-good", "case-good"), meta("tenant-good"))
    channel = Exploding(WebhookChannel(client, ctx.settings, ctx.clock), "tenant-bad", error)
    docs = {d["tenant_id"]: d for d in await run_until_done(ctx, {"webhook": channel}, n=2)}
    assert docs["tenant-good"]["state"] == "delivered" and len(good.requests) == 1
    failed = docs["tenant-bad"]
    assert failed["state"] == "dead_letter" and "in_flight" not in failed
    assert [a["error"] for a in failed["attempts"]] == [type(error).__name__] * len(
        failed["attempts"]
    )
    assert channel.calls == len(failed["attempts"]) <= 3


async def test_a_stored_url_httpx_cannot_send_is_dead_lettered_not_retried_for_ever(
    env: tuple[NotifyStore, httpx.AsyncClient],
) -> None:
    """A URL stored before subscription-time normalisation existed."""
    store, client = env
    ctx = notify(store, fast())
    legacy = Subscription(
        id="sub_legacy",
        tenant_id="t1",
        event_types=["report.ready"],
        url="http://127.0.0.1:18990/x\r\nX: 1",
        secret=webhooks.new_secret(),
        created_at=ctx.clock.now(),
    )
    await store.add_subscription(legacy)
    await handlers.fan_out(ctx, ready_event(), meta())
    [doc] = await run_until_done(ctx, webhook_only(ctx, client))
    assert doc["state"] == "dead_letter" and len(doc["attempts"]) == 1
    assert doc["attempts"][0]["error"] == "webhook URL is malformed"


async def test_links_in_a_delivered_report_ready_are_notifys_own(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    """Issue 15 finding 3: a `report.ready` from anyone with a link to a phishing
    page was delivered, validly signed, with that link."""
    store, client = env
    rx = receiver(receivers)
    ctx = notify(store, fast(public_reporting_url="https://reports.example/"))
    sub = await handlers.create_subscription(ctx, "t1", rx.url, ["report.ready"])
    forged = ready_event(report_link="https://phish.example/sign-in")
    await handlers.fan_out(ctx, forged, meta())
    await run_until_done(ctx, webhook_only(ctx, client))
    headers, body = rx.requests[-1]
    links = Webhook(sub.secret).verify(body, headers)["data"]["links"]
    assert links == {
        "report": "https://reports.example/v1/reports/r1",
        "fhir": "https://reports.example/v1/reports/r1/fhir",
        "pdf": "https://reports.example/v1/reports/r1/pdf",
        "signature": "https://reports.example/v1/reports/r1/signature",
    }
    assert b"phish" not in body


async def test_a_deleted_subscription_is_kept_for_audit_and_never_delivered_to(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    """Issue 15 finding 7: delete was a hard delete, leaving no record of where
    a tenant's events had been going."""
    store, client = env
    rx = receiver(receivers)
    ctx = notify(store, fast())
    sub = await handlers.create_subscription(ctx, "t1", rx.url, ["report.ready", "sla.breached"])
    await handlers.fan_out(ctx, ready_event(), meta())  # pending when the subscription goes
    await handlers.delete_subscription(ctx, "t1", sub.id)
    kept = await store.subscriptions.find_one({"_id": sub.id})
    assert kept is not None and kept["state"] == "deleted" and kept["url"] == sub.url
    assert kept["deleted_at"] == ctx.clock.now()
    assert await store.subscriptions_of("t1") == []
    for call in (
        handlers.delete_subscription(ctx, "t1", sub.id),
        handlers.update_subscription(ctx, "t1", sub.id, {"active": True}),
        handlers.rotate_secret(ctx, "t1", sub.id, 0),
        store.subscription("t1", sub.id),
    ):
        with pytest.raises(NotFound):
            await call
    sla = SlaBreached(case_id="case-1", tenant_id="t1", assignment_id="a1", due_at=ctx.clock.now())
    assert await handlers.fan_out(ctx, sla, meta()) == 0
    [doc] = await run_until_done(ctx, webhook_only(ctx, client))
    assert doc["state"] == "dead_letter" and rx.requests == []
    assert doc["attempts"][0]["error"] == "subscription inactive or removed"


class Mailbox:
    """An aiosmtpd handler keeping messages; answers RCPT with `rcpt_reply` if set."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.rcpt_reply: list[str] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, _: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 Message accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    with socket.socket() as probe:  # a free loopback port (aiosmtpd needs one up front)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


async def test_email_channel_to_treating_clinician_via_smtp(
    env: tuple[NotifyStore, httpx.AsyncClient],
    receivers: list[Receiver],
    smtp: tuple[Mailbox, int],
) -> None:
    store, client = env
    box, port = smtp
    box.rcpt_reply = ["451 4.3.0 try again later"]  # one temporary refusal: retried
    ctx = notify(store, fast(smtp_port=port, public_reporting_url="https://reports.example"))
    portal = receiver(receivers)
    await handlers.create_subscription(
        ctx,
        "t1",
        "",
        ["report.ready"],
        email="dr.who@clinic.example",
        audience="treating_clinician",
    )
    await handlers.create_subscription(
        ctx, "t1", portal.url, ["report.ready"], audience="patient_portal"
    )
    await handlers.fan_out(ctx, ready_event(), meta())
    channels = {**webhook_only(ctx, client), "email": EmailChannel(ctx.settings)}
    docs = {d["channel"]: d for d in await run_until_done(ctx, channels, n=2)}
    assert (
        docs["email"]["state"] == "delivered" and docs["email"]["audience"] == "treating_clinician"
    )
    assert [a["status"] for a in docs["email"]["attempts"]] == [451, 250]
    assert docs["webhook"]["state"] == "delivered" and len(portal.requests) == 1
    [raw] = box.messages
    mail = message_from_bytes(raw)
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode()
    assert mail["To"] == "dr.who@clinic.example"
    assert mail["Message-ID"] == f"<{docs['email']['_id']}@second-opinion.notify>"
    assert "https://reports.example/v1/reports/r1" in text and "case-1" in text
    assert "confirmed" not in text and "rev" not in mail["Subject"]  # no clinical content


async def test_email_permanent_refusal_dead_letters(
    env: tuple[NotifyStore, httpx.AsyncClient], smtp: tuple[Mailbox, int]
) -> None:
    store, _ = env
    box, port = smtp
    box.rcpt_reply = ["550 5.1.1 no such user"]
    ctx = notify(store, fast(smtp_port=port))
    await handlers.create_subscription(
        ctx, "t1", "", ["report.ready"], email="nobody@clinic.example"
    )
    await handlers.fan_out(ctx, ready_event(), meta())
    [doc] = await run_until_done(ctx, {"email": EmailChannel(ctx.settings)})
    assert doc["state"] == "dead_letter" and [a["status"] for a in doc["attempts"]] == [550]
    assert box.messages == []

"""notify's delivery to readers against the real parts (docs/notify.md): the
treating clinician's e-mail received by the local SMTP relay (STARTTLS, AUTH)
with the signed PDF fetched from the real reporting API with notify's service
key; a partner endpoint down for two simulated days receiving every event once
it is back, in order, without a hand resend; a dead endpoint that does not
hold up another's deliveries; 410 disabling the subscription; sequence numbers
allocated atomically by the real database; a dead letter counted on /metrics,
shown to operations and mailed to the partner's technical contact.

Time is a ManualClock moved forward (no real waiting); webhooks are verified
with the `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import io
import json
import mailbox
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from faststream.kafka import TestKafkaBroker
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase
from pypdf import PdfReader
from standardwebhooks import Webhook

from services.notify import handlers, transport
from services.notify.app import create_service as create_notify
from services.notify.channels import Channel, EmailChannel, WebhookChannel
from services.notify.handlers import Notify
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from services.reporting.app import create_service as create_reporting
from services.reporting.settings import ReportingSettings
from shared.clock import ManualClock
from shared.envelope import EventMeta, ce_headers, new_event_id
from shared.events import CaseAccepted, CaseAssigned, ReportLinks, ReportReady, RoutingContext
from shared.store import Doc
from tests.integration.test_notify import Receiver, receiver, receivers  # noqa: F401
from tests.unit.test_reporting_domain import opinion_json

TENANT = "demo-health"
NOTIFY_KEY = "notify-svc.dev-secret-notify-svc"


def smtp_settings(infra: dict[str, Any], **overrides: Any) -> NotifySettings:
    """Development settings on the local relay: STARTTLS verified against its
    certificate, AUTH with its local credentials; second-long backoff."""
    return NotifySettings(
        **{
            "dev_mode": True,
            "smtp_host": infra["smtp_host"],
            "smtp_port": infra["smtp_port"],
            "smtp_starttls": True,
            "smtp_ca_file": infra["smtp_ca_file"],
            "smtp_username": infra["smtp_username"],
            "smtp_password": infra["smtp_password"],
            "base_backoff_seconds": 1,
            "max_backoff_seconds": 5,
            "public_reporting_url": "https://reports.example",
            **overrides,
        }
    )


def mails_with(infra: dict[str, Any], message_id: str) -> list[Message]:
    box = mailbox.Maildir(infra["smtp_maildir"], create=False)
    return [m for m in box if m["Message-ID"] == message_id]


async def wait_for_mail(infra: dict[str, Any], message_id: str) -> Message:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = mails_with(infra, message_id)
        if found:
            assert len(found) == 1
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no mail {message_id} in the maildir")


def meta(tenant: str = TENANT) -> EventMeta:
    return EventMeta(new_event_id(), ReportReady.ce_type(), "/it", "2026-11-20T10:00:00Z", tenant)


def ready(case_id: str, report_id: str = "r1", tenant: str = TENANT) -> ReportReady:
    return ReportReady(
        case_id=case_id,
        tenant_id=tenant,
        report_id=report_id,
        reviewer_id="rev-neuro-1",
        concordance="changed_diagnosis",
        signed_at=datetime(2026, 11, 20, 10, tzinfo=UTC),
        content_sha256="0" * 64,
        links=ReportLinks(report=f"/v1/reports/{report_id}"),
    )


def accepted(case_id: str, email: str) -> CaseAccepted:
    return CaseAccepted(
        case_id=case_id,
        tenant_id=TENANT,
        external_id=f"ext-{case_id}",
        routing=RoutingContext(subspecialties=["neuroradiology"], jurisdiction="US-CA"),
        records=[],
        treating_clinician_email=email,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def store(db: AsyncDatabase[Doc]) -> NotifyStore:
    s = NotifyStore(db["subscriptions"], db["deliveries"], db["clinicians"])
    await s.create_indexes()
    return s


def ctx_at(store: NotifyStore, settings: NotifySettings) -> Notify:
    """Handlers on a ManualClock at the real time (the partner's verifier checks
    the signature's timestamp against the wall clock), whole seconds."""
    return Notify(store, settings, ManualClock(datetime.now(UTC).replace(microsecond=0)))


# ---------------------------------------------------------------- the treating clinician


@pytest_asyncio.fixture(loop_scope="session")
async def reporting_api(
    infra: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    """The real reporting service in process (its own database, the real API
    over ASGI, its case.assigned subscriber driven by TestKafkaBroker) holding
    one signed report; yields the client, the case id and the report id."""
    run = uuid.uuid4().hex[:8]
    settings = ReportingSettings(
        mongo_uri=infra["mongo_uri"],
        mongo_database=f"it_reporting_{run}",
        key_dir=tmp_path / "keys",
        trace_dir=tmp_path / "traces",
        public_base_url="https://reports.example",
    )
    service = create_reporting(settings, ManualClock(datetime(2026, 11, 20, 10, tzinfo=UTC)))
    case_id, asg = f"case-{run}", f"asg-{run}"
    event = CaseAssigned(
        case_id=case_id,
        tenant_id=TENANT,
        assignment_id=asg,
        reviewer_id="rev-neuro-1",
        subspecialty="neuroradiology",
        due_at=datetime(2026, 11, 22, 10, tzinfo=UTC),
        reason="subspecialty match",
        reviewer_name="Dr. Ines Moreau",
    )
    headers = ce_headers(
        event_id=new_event_id(), ce_type=event.ce_type(), source="/it", tenant_id=TENANT
    )
    async with TestKafkaBroker(service.broker) as broker:
        await broker.publish(event.model_dump_json().encode(), topic=event.topic, headers=headers)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=service.api), base_url="http://reporting", timeout=30
    )
    try:
        resp = await client.post(
            f"/v1/assignments/{asg}/opinion",
            json=opinion_json(),
            headers={"Authorization": "Bearer rev-neuro-1.dev-secret-rev-neuro-1"},
        )
        assert resp.status_code == 201, resp.text
        yield client, case_id, resp.json()["report_id"]
    finally:
        await client.aclose()
        await service.client.drop_database(settings.mongo_database)
        await service.client.close()


async def test_treating_clinician_receives_the_signed_pdf_over_starttls(
    store: NotifyStore,
    infra: dict[str, Any],
    reporting_api: tuple[httpx.AsyncClient, str, str],
) -> None:
    reports, case_id, report_id = reporting_api
    settings = smtp_settings(
        infra,
        clinician_report_policy={TENANT: "attachment"},
        reporting_url="http://reporting",
        reporting_api_key=NOTIFY_KEY,
    )
    ctx = ctx_at(store, settings)
    # case.accepted gives notify the clinician's address; report.ready sends it.
    await handlers.remember_clinician(ctx, accepted(case_id, "Dr.Who@Clinic.Example"))
    m = meta()
    assert await handlers.fan_out(ctx, ready(case_id, report_id), m) == 1
    channels: dict[str, Channel] = {"email": EmailChannel(settings, reports)}
    assert await handlers.dispatch_one(ctx, channels)
    [doc] = await store.deliveries.find({"audience": "treating_clinician"}).to_list()
    assert doc["state"] == "delivered", doc["attempts"]
    assert [a["status"] for a in doc["attempts"]] == [250]
    assert doc["outbox"][0]["body"]["audience"] == "treating_clinician"
    mail = await wait_for_mail(infra, f"<{doc['_id']}@second-opinion.notify>")
    assert mail["To"] == "Dr.Who@clinic.example"
    parts = list(mail.walk())
    text = next(p for p in parts if p.get_content_type() == "text/plain")
    body = text.get_payload(decode=True)
    assert isinstance(body, bytes) and case_id.encode() in body
    [pdf_part] = [p for p in parts if p.get_content_type() == "application/pdf"]
    pdf = pdf_part.get_payload(decode=True)
    assert isinstance(pdf, bytes)
    # The very PDF reporting serves its partner, as the clinician received it.
    served = await reports.get(
        f"/v1/reports/{report_id}/pdf",
        headers={"Authorization": "Bearer demo-partner.dev-secret-demo-partner"},
    )
    assert served.status_code == 200

    def pages(data: bytes) -> list[str]:
        return [p.extract_text() for p in PdfReader(io.BytesIO(data)).pages]

    assert pages(pdf) == pages(served.content)  # same report (only its render time differs)
    assert "infarct" in "".join(pages(pdf))
    # Without the service key reporting refuses notify, and the delivery says so
    # (dead letter, no mail), never a mail without the report it promises.
    no_key = smtp_settings(
        infra, clinician_report_default="attachment", reporting_url="http://reporting"
    )
    ctx2 = ctx_at(store, no_key)
    m2 = meta()
    await handlers.fan_out(ctx2, ready(case_id, report_id), m2)
    assert await handlers.dispatch_one(ctx2, {"email": EmailChannel(no_key, reports)})
    refused = await store.deliveries.find_one(
        {"_id": {"$ne": doc["_id"]}, "audience": "treating_clinician"}
    )
    assert refused is not None and refused["state"] == "dead_letter"
    assert refused["attempts"][0]["error"] == "no reporting credential for the PDF"


async def test_link_policy_sends_a_link_and_no_attachment(
    store: NotifyStore, infra: dict[str, Any]
) -> None:
    settings = smtp_settings(infra)  # the default policy: a link
    ctx = ctx_at(store, settings)
    case_id = f"case-{uuid.uuid4().hex[:8]}"
    await handlers.remember_clinician(ctx, accepted(case_id, "gp@practice.example"))
    await handlers.fan_out(ctx, ready(case_id, "r-link"), meta())
    assert await handlers.dispatch_one(ctx, {"email": EmailChannel(settings)})
    [doc] = await store.deliveries.find({"case_id": case_id}).to_list()
    assert doc["state"] == "delivered"
    mail = await wait_for_mail(infra, f"<{doc['_id']}@second-opinion.notify>")
    assert not mail.is_multipart()
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"https://reports.example/v1/reports/r-link" in body
    assert b"changed" not in body  # no clinical content in a link mail


# ---------------------------------------------------------------- webhooks


async def dispatch_all(ctx: Notify, channels: dict[str, Channel]) -> int:
    n = 0
    while await handlers.dispatch_one(ctx, channels) and n < 500:
        n += 1
    return n


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The Standard Webhooks signature checked with the `standardwebhooks`
    library at the message's own timestamp (the simulated days put it far from
    the wall clock, which Webhook.verify also checks), then the payload."""
    at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(headers["webhook-id"], at, body.decode())
    assert expected in headers["webhook-signature"].split(" ")
    payload: dict[str, Any] = json.loads(body)
    return payload


async def run_to(ctx: Notify, channels: dict[str, Channel], until: datetime) -> int:
    """Dispatch everything due, then move the clock to the next due delivery,
    until `until` (no real waiting; as many rounds as there are due times).
    Returns how many deliveries the dispatcher claimed (sent or given back)."""
    clock = ctx.clock
    assert isinstance(clock, ManualClock)
    claimed = 0
    for _ in range(2000):
        claimed += await dispatch_all(ctx, channels)
        nxt = await ctx.store.deliveries.find_one(
            {"state": "pending"}, sort=[("next_attempt_at", 1)]
        )
        if nxt is None or nxt["next_attempt_at"] > until:
            clock.set(until)
            return claimed
        clock.set(max(clock.now(), nxt["next_attempt_at"]))
    raise AssertionError("the schedule did not settle")


async def test_partner_down_two_days_receives_every_event_in_order_once_back(
    store: NotifyStore,
    receivers: list[Receiver],  # noqa: F811
) -> None:
    rx = receiver(receivers)
    rx.statuses = [503] * 10_000  # down: every request answered 503
    settings = NotifySettings(dev_mode=True)  # the production schedule and breaker
    ctx = ctx_at(store, settings)
    clock = ctx.clock
    assert isinstance(clock, ManualClock)
    sub = await handlers.create_subscription(ctx, TENANT, rx.url, ["report.ready"])
    cases = [f"case-{i}" for i in range(6)]
    start = clock.now()
    async with transport.webhook_client(5, allow_loopback=True) as client:
        channels: dict[str, Channel] = {"webhook": WebhookChannel(client, settings, clock)}
        # Events keep coming during the outage, one every eight hours, for two days.
        claimed = 0
        for i, case_id in enumerate(cases):
            await handlers.fan_out(ctx, ready(case_id), meta())
            claimed += await run_to(ctx, channels, start + timedelta(hours=8 * (i + 1)))
        assert clock.now() - start == timedelta(days=2)
        down_requests = len(rx.requests)
        # What is held waits for the probe, which the oldest held delivery makes
        # as soon as the breaker allows: the dispatcher does not re-check every
        # held delivery each lease (5,167 claims over the two days before, 151 now).
        assert claimed < 400, claimed
        stored = await store.subscription(TENANT, sub.id)
        assert stored.breaker.state in ("open", "half_open")
        assert await store.deliveries.count_documents({"state": "pending"}) == 6
        # With the breaker the dead endpoint saw the threshold's failures and then
        # one probe per open interval (up to 1 h), not every delivery's retries.
        assert down_requests < 150
        # Back up: the next probe succeeds and everything held is released.
        rx.statuses = []
        await run_to(ctx, channels, clock.now() + timedelta(hours=2))
    got = [verified(sub.secret, h, b) for h, b in rx.requests[down_requests:]]
    assert [g["data"]["case_id"] for g in got] == cases  # every event, once, in order
    assert [g["sequence"] for g in got] == [1, 2, 3, 4, 5, 6]
    docs = await store.deliveries.find({"subscription_id": sub.id}).sort("sequence").to_list()
    assert [d["state"] for d in docs] == ["delivered"] * 6
    assert all(d["resends"] == 0 for d in docs)  # nobody resent by hand
    assert (await store.subscription(TENANT, sub.id)).breaker.state == "closed"
    # The partner asks for 2..3 again (say its store lost them): same webhook-ids.
    assert await handlers.resend_sequences(ctx, TENANT, sub.id, 2, 3) == 2
    async with transport.webhook_client(5, allow_loopback=True) as client:
        await dispatch_all(ctx, {"webhook": WebhookChannel(client, settings, clock)})
    again = [h["webhook-id"] for h, _ in rx.requests[-2:]]
    assert again == [docs[1]["_id"], docs[2]["_id"]]


async def test_a_dead_endpoint_does_not_hold_up_another(
    store: NotifyStore,
    receivers: list[Receiver],  # noqa: F811
) -> None:
    dead = receiver(receivers)
    dead.statuses = [503] * 1000
    healthy = receiver(receivers)
    settings = NotifySettings(dev_mode=True, breaker_failure_threshold=3)
    ctx = ctx_at(store, settings)
    dead_sub = await handlers.create_subscription(ctx, TENANT, dead.url, ["report.ready"])
    ok_sub = await handlers.create_subscription(ctx, TENANT, healthy.url, ["report.ready"])
    async with transport.webhook_client(5, allow_loopback=True) as client:
        channels: dict[str, Channel] = {"webhook": WebhookChannel(client, settings, ctx.clock)}
        for i in range(10):
            await handlers.fan_out(ctx, ready(f"case-{i}"), meta())
        # The dead endpoint's first deliveries fail; retries come due later and
        # the healthy endpoint's are sent meanwhile. Move time on retry by retry.
        for _ in range(40):
            await dispatch_all(ctx, channels)
            assert isinstance(ctx.clock, ManualClock)
            ctx.clock.advance(timedelta(seconds=15))
    assert len(healthy.requests) == 10
    ok = await store.deliveries.count_documents(
        {"subscription_id": ok_sub.id, "state": "delivered"}
    )
    assert ok == 10
    broken = await store.subscription(TENANT, dead_sub.id)
    assert broken.breaker.state in ("open", "half_open") and broken.breaker.opened >= 1
    # Only the threshold's failures, then one probe per open interval (>= 30 s):
    # 10 minutes of this is a handful of requests, not ten deliveries' retries.
    assert 3 <= len(dead.requests) <= 3 + 10 * 60 // 30
    held = await store.deliveries.find({"subscription_id": dead_sub.id}).to_list()
    assert {d["state"] for d in held} == {"pending"}
    assert all(d["next_attempt_at"] >= broken.breaker.retry_at for d in held if d["attempts"] == [])


async def test_410_gone_disables_the_subscription_visibly(
    store: NotifyStore,
    receivers: list[Receiver],  # noqa: F811
) -> None:
    gone = receiver(receivers, [410])
    settings = NotifySettings(dev_mode=True)
    ctx = ctx_at(store, settings)
    sub = await handlers.create_subscription(ctx, TENANT, gone.url, ["report.ready"])
    await handlers.fan_out(ctx, ready("case-a"), meta())
    async with transport.webhook_client(5, allow_loopback=True) as client:
        await dispatch_all(ctx, {"webhook": WebhookChannel(client, settings, ctx.clock)})
    stored = await store.subscription(TENANT, sub.id)
    assert not stored.active and "410 Gone" in stored.disabled_reason
    assert await handlers.fan_out(ctx, ready("case-b"), meta()) == 0  # nothing more for it
    # The partner fixes its endpoint and resumes: the reason is cleared.
    resumed = await handlers.update_subscription(ctx, TENANT, sub.id, {"active": True})
    assert resumed.active and resumed.disabled_reason == ""


async def test_sequence_numbers_are_allocated_atomically(store: NotifyStore) -> None:
    ctx = ctx_at(store, NotifySettings(dev_mode=True))
    sub = await handlers.create_subscription(ctx, TENANT, "http://127.0.0.1:9/h", ["report.ready"])
    got = await asyncio.gather(*(store.allocate_sequence(sub.id, f"d{i}") for i in range(30)))
    assert sorted(got) == list(range(1, 31))
    # The same delivery asking again (a retried fan-out) gets its number back.
    assert await store.allocate_sequence(sub.id, "d-last") == 31
    assert await store.allocate_sequence(sub.id, "d-last") == 31


# ---------------------------------------------------------------- dead-letter alerts


def dead_letter_count() -> float:
    value = REGISTRY.get_sample_value(
        "notify_dead_letters_total", {"channel": "webhook", "audience": "partner"}
    )
    return value or 0.0


async def test_a_dead_letter_raises_the_alert_metric_and_mails_the_technical_contact(
    db: AsyncDatabase[Doc],
    infra: dict[str, Any],
    receivers: list[Receiver],  # noqa: F811
) -> None:
    refusing = receiver(receivers, [400])
    settings = smtp_settings(infra, mongo_uri=infra["mongo_uri"], mongo_database=db.name)
    service = create_notify(settings, ManualClock(datetime.now(UTC).replace(microsecond=0)))
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.api), base_url="http://n")
    partner = {"Authorization": "Bearer demo-partner.dev-secret-demo-partner"}
    ops = {"Authorization": "Bearer ops.dev-secret-ops"}
    resp = await api.post(
        "/v1/subscriptions",
        json={"url": refusing.url, "technical_contact_email": "integrations@partner.example"},
        headers=partner,
    )
    assert resp.status_code == 201, resp.text
    sub_id = resp.json()["subscription_id"]
    store = NotifyStore(db["subscriptions"], db["deliveries"], db["clinicians"])
    ctx = Notify(store, settings, service.clock)
    before = dead_letter_count()
    await handlers.fan_out(ctx, ready("case-dl"), meta())
    async with transport.webhook_client(5, allow_loopback=True) as client:
        channels: dict[str, Channel] = {
            "webhook": WebhookChannel(client, settings, ctx.clock),
            "email": EmailChannel(settings),
        }
        await dispatch_all(ctx, channels)
    assert dead_letter_count() == before + 1
    metrics = await api.get("/metrics")
    assert 'notify_dead_letters_total{audience="partner",channel="webhook"}' in metrics.text
    [dead] = await store.deliveries.find({"kind": "event"}).to_list()
    assert dead["state"] == "dead_letter" and dead["alert"] == "raised"
    [alert] = await store.deliveries.find({"kind": "dead_letter_alert"}).to_list()
    assert alert["state"] == "delivered" and alert["audience"] == "technical_contact"
    mail = await wait_for_mail(infra, f"<{alert['_id']}@second-opinion.notify>")
    assert mail["To"] == "integrations@partner.example" and sub_id in mail["Subject"]
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes) and dead["_id"].encode() in body and b"HTTP 400" in body
    # Operations see it too (the dashboard's numbers).
    health = await api.get("/v1/delivery-health", headers=ops)
    assert health.status_code == 200, health.text
    assert health.json()["deliveries"]["dead_letter"] == 1
    assert health.json()["dead_letters_by_audience"]["partner"] == 1
    assert (await api.get("/v1/delivery-health", headers=partner)).status_code == 403
    await api.aclose()
    await service.client.close()

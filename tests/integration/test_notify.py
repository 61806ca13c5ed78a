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
from datetime import UTC, datetime
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

from services.notify import handlers, webhooks
from services.notify.channels import Channel, EmailChannel, WebhookChannel
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.envelope import EventMeta
from shared.errors import UnregisteredEndpoint
from shared.events import ReportLinks, ReportReady
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


def ready_event(tenant: str = "t1", case_id: str = "case-1") -> ReportReady:
    return ReportReady(
        case_id=case_id,
        tenant_id=tenant,
        report_id="r1",
        reviewer_id="rev",
        concordance="confirmed",
        signed_at="2026-11-20T10:00:00Z",
        content_sha256="0" * 64,
        links=ReportLinks(report="/v1/reports/r1"),
    )


def meta(tenant: str = "t1") -> EventMeta:
    return EventMeta(
        str(uuid.uuid4()), ReportReady.ce_type(), "/it", "2026-11-20T10:00:00Z", tenant
    )


def fast(**overrides: Any) -> NotifySettings:
    """Settings with millisecond backoff, so retries run within a test."""
    return NotifySettings(
        **{"base_backoff_seconds": 0.01, "max_backoff_seconds": 0.05, **overrides}
    )


@pytest_asyncio.fixture(loop_scope="session")
async def env(db: AsyncDatabase[Doc]) -> AsyncIterator[tuple[NotifyStore, httpx.AsyncClient]]:
    store = NotifyStore(db["subscriptions"], db["deliveries"])
    await store.create_indexes()
    async with httpx.AsyncClient(timeout=5) as client:
        yield store, client


async def run_until_done(
    store: NotifyStore, settings: NotifySettings, channels: dict[str, Channel], n: int = 1
) -> list[Doc]:
    """Dispatch until `n` deliveries are finished (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await handlers.dispatch_one(store, settings, channels)
        docs = await store.deliveries.find({"state": {"$ne": "pending"}}).to_list()
        if len(docs) >= n:
            return docs
    raise AssertionError("deliveries not finished in time")


def webhook_only(settings: NotifySettings, client: httpx.AsyncClient) -> dict[str, Channel]:
    return {"webhook": WebhookChannel(client, settings)}


async def test_failing_receiver_gets_one_logical_signed_delivery(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx = receiver(receivers, [500, 503, 500])
    settings = fast()
    sub = await handlers.create_subscription(store, settings, "t1", rx.url, ["report.ready"])
    m = meta()
    assert await handlers.fan_out(store, ready_event(), m) == 1
    assert await handlers.fan_out(store, ready_event(), m) == 0  # redelivered: no second one
    [doc] = await run_until_done(store, settings, webhook_only(settings, client))
    assert doc["state"] == "delivered"
    assert [a["status"] for a in doc["attempts"]] == [500, 503, 500, 204]
    assert all(a["latency_ms"] >= 0 and a["at"] for a in doc["attempts"])
    assert [a["error"] for a in doc["attempts"]][:1] == ["HTTP 500"]
    assert rx.webhook_ids() == [doc["_id"]] * 4  # same webhook-id on every retry
    headers, body = rx.requests[-1]
    assert Webhook(sub["secret"]).verify(body, headers)["data"]["case_id"] == "case-1"
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # tampered body
        Webhook(sub["secret"]).verify(body.replace(b"case-1", b"case-2"), headers)
    assert [e["topic"] for e in doc["outbox"]] == ["notification.delivered"]


async def test_dead_letter_then_resend_after_recovery(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx = receiver(receivers, [503] * 3)
    settings = fast(max_attempts=3)
    sub = await handlers.create_subscription(store, settings, "t1", rx.url, ["report.ready"])
    await handlers.fan_out(store, ready_event(), meta())
    [doc] = await run_until_done(store, settings, webhook_only(settings, client))
    assert doc["state"] == "dead_letter" and len(doc["attempts"]) == 3
    assert doc["outbox"][0]["body"]["status"] == "dead_letter"
    # The receiver has recovered (answers 204 from now on): resend all dead letters.
    assert await handlers.resend_dead_letters(store, "t1", sub["_id"]) == 1
    assert await handlers.resend_dead_letters(store, "t1", sub["_id"]) == 0  # none left
    await store.deliveries.update_one({"_id": doc["_id"]}, {"$set": {"outbox": []}})
    [doc] = await run_until_done(store, settings, webhook_only(settings, client))
    assert doc["state"] == "delivered" and doc["resends"] == 1
    assert [a["status"] for a in doc["attempts"]] == [503, 503, 503, 204]
    assert set(rx.webhook_ids()) == {doc["_id"]}
    Webhook(sub["secret"]).verify(rx.requests[-1][1], rx.requests[-1][0])


async def test_retry_after_is_honoured_and_other_4xx_not_retried(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    settings = NotifySettings(base_backoff_seconds=0.01, max_backoff_seconds=600)
    limited = receiver(receivers, [(429, {"Retry-After": "120"})])
    gone = receiver(receivers, [410])
    for r in (limited, gone):
        await handlers.create_subscription(store, settings, "t1", r.url, ["report.ready"])
    await handlers.fan_out(store, ready_event(), meta())
    channels = webhook_only(settings, client)
    before = datetime.now(UTC)
    while await handlers.dispatch_one(store, settings, channels):
        pass
    throttled = await store.deliveries.find_one({"attempts.status": 429})
    refused = await store.deliveries.find_one({"attempts.status": 410})
    assert throttled is not None and refused is not None
    assert throttled["state"] == "pending"
    assert (throttled["next_attempt_at"] - before).total_seconds() >= 119
    assert refused["state"] == "dead_letter" and len(refused["attempts"]) == 1
    assert len(gone.requests) == 1


async def test_rotated_secret_signs_with_both_during_grace(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx = receiver(receivers)
    settings = fast()
    sub = await handlers.create_subscription(store, settings, "t1", rx.url, ["report.ready"])
    rotated = await handlers.rotate_secret(store, "t1", sub["_id"], grace_seconds=3600)
    assert rotated["secret"] != sub["secret"]
    await handlers.fan_out(store, ready_event(), meta())
    await run_until_done(store, settings, webhook_only(settings, client))
    headers, body = rx.requests[-1]
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (sub["secret"], rotated["secret"]):
        Webhook(secret).verify(body, headers)
    # A rotation without grace drops every old secret at once.
    final = await handlers.rotate_secret(store, "t1", sub["_id"], grace_seconds=0)
    assert final["previous_secrets"] == [
        p for p in rotated["previous_secrets"]
    ]  # the earlier grace entry stays until it expires
    await store.subscriptions.update_one({"_id": sub["_id"]}, {"$set": {"previous_secrets": []}})
    await handlers.fan_out(store, ready_event(), meta())
    await run_until_done(store, settings, webhook_only(settings, client), n=2)
    headers, body = rx.requests[-1]
    Webhook(final["secret"]).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(sub["secret"]).verify(body, headers)


async def test_metadata_and_private_urls_refused(db: AsyncDatabase[Doc]) -> None:
    store = NotifyStore(db["subscriptions"], db["deliveries"])
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook"):
        with pytest.raises(UnregisteredEndpoint):
            await handlers.create_subscription(store, NotifySettings(), "t1", url, ["report.ready"])
    with pytest.raises(UnregisteredEndpoint, match="https"):  # production mode: https only
        await handlers.create_subscription(
            store, NotifySettings(dev_mode=False), "t1", "http://127.0.0.1:9/h", ["report.ready"]
        )
    assert await store.subscriptions.count_documents({}) == 0


async def test_tenant_b_never_sees_tenant_a_events(
    env: tuple[NotifyStore, httpx.AsyncClient], receivers: list[Receiver]
) -> None:
    store, client = env
    rx_a, rx_b = receiver(receivers), receiver(receivers)
    settings = fast()
    await handlers.create_subscription(store, settings, "tenant-a", rx_a.url, ["report.ready"])
    await handlers.create_subscription(store, settings, "tenant-b", rx_b.url, ["report.ready"])
    await handlers.fan_out(store, ready_event("tenant-a", "case-a"), meta("tenant-a"))
    docs = await run_until_done(store, settings, webhook_only(settings, client))
    assert [d["tenant_id"] for d in docs] == ["tenant-a"]
    assert len(rx_a.requests) == 1 and rx_b.requests == []
    assert await store.list_deliveries("tenant-b", {}, 10) == []


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
    settings = fast(smtp_port=port, public_reporting_url="https://reports.example")
    portal = receiver(receivers)
    await handlers.create_subscription(
        store,
        settings,
        "t1",
        "",
        ["report.ready"],
        email="dr.who@clinic.example",
        audience="treating_clinician",
    )
    await handlers.create_subscription(
        store, settings, "t1", portal.url, ["report.ready"], audience="patient_portal"
    )
    await handlers.fan_out(store, ready_event(), meta())
    channels = {**webhook_only(settings, client), "email": EmailChannel(settings)}
    docs = {d["channel"]: d for d in await run_until_done(store, settings, channels, n=2)}
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
    settings = fast(smtp_port=port)
    await handlers.create_subscription(
        store, settings, "t1", "", ["report.ready"], email="nobody@clinic.example"
    )
    await handlers.fan_out(store, ready_event(), meta())
    [doc] = await run_until_done(store, settings, {"email": EmailChannel(settings)})
    assert doc["state"] == "dead_letter" and [a["status"] for a in doc["attempts"]] == [550]
    assert box.messages == []

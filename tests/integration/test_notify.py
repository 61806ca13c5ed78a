"""notify's webhook delivery against a real local HTTP receiver and the real database."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase
from standardwebhooks import Webhook

from services.notify import handlers
from services.notify.settings import NotifySettings
from services.notify.store import NotifyStore
from shared.envelope import EventMeta
from shared.errors import UnregisteredEndpoint
from shared.events import ReportLinks, ReportReady
from shared.store import Doc


class Receiver:
    """A partner endpoint answering with the given status codes in turn."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if outer.statuses else 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500, 503, 500])
    yield r
    r.server.shutdown()


def ready_event() -> ReportReady:
    return ReportReady(
        case_id="case-1",
        tenant_id="t1",
        report_id="r1",
        reviewer_id="rev",
        concordance="confirmed",
        signed_at="2026-11-20T10:00:00Z",
        content_sha256="0" * 64,
        links=ReportLinks(report="http://x/r1"),
    )


async def test_failing_receiver_gets_one_logical_signed_delivery(
    receiver: Receiver, db: AsyncDatabase[Doc]
) -> None:
    settings = NotifySettings(base_backoff_seconds=0.01, max_backoff_seconds=0.05)
    store = NotifyStore(db["subscriptions"], db["deliveries"])
    await store.create_indexes()
    sub = await handlers.create_subscription(store, settings, "t1", receiver.url, ["report.ready"])
    meta = EventMeta(
        event_id=str(uuid.uuid4()),
        ce_type="",
        source="",
        time="2026-11-20T10:00:00Z",
        tenant_id="t1",
    )
    assert await handlers.fan_out(store, ready_event(), meta) == 1
    assert (
        await handlers.fan_out(store, ready_event(), meta) == 0
    )  # redelivered event: no second delivery
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(200):
            await handlers.dispatch_one(store, settings, client)
            doc = await store.deliveries.find_one({})
            if doc and doc["state"] != "pending":
                break
    assert doc is not None and doc["state"] == "delivered"
    assert [a["status"] for a in doc["attempts"]] == [500, 503, 500, 204]
    ids = {h["webhook-id"] for h, _ in receiver.requests}
    assert len(receiver.requests) == 4 and ids == {doc["_id"]}  # same webhook-id on every retry
    headers, body = receiver.requests[-1]
    assert Webhook(sub["secret"]).verify(body, headers)["data"]["case_id"] == "case-1"
    assert doc["outbox"][0]["topic"] == "notification.delivered"


async def test_metadata_and_private_urls_refused(db: AsyncDatabase[Doc]) -> None:
    store = NotifyStore(db["subscriptions"], db["deliveries"])
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook"):
        with pytest.raises(UnregisteredEndpoint):
            await handlers.create_subscription(store, NotifySettings(), "t1", url, ["report.ready"])
    assert await store.subscriptions.count_documents({}) == 0

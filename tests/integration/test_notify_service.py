"""notify as a process (`python -m services.notify`) against the real broker and
database: what only a real broker and a real process show. Tenant isolation of
events consumed from Kafka (a forged tenant header dead-lettered by the
consumer), dead letters and resend through the running dispatcher, and exactly
one logical delivery when the process is SIGKILLed between sending a webhook
and recording the attempt. The API's logic runs in-process in
test_notify_api.py and the handlers' in test_notify.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from faststream.kafka import KafkaBroker
from standardwebhooks import Webhook

from shared.envelope import ce_headers
from shared.events import ReportReady
from shared.store import Doc, connect
from tests.conftest import REPO, eventually
from tests.integration.test_notify import Receiver, ready_event

A, B = "demo-health", "other-clinic"
KEYS = {A: "demo-partner.dev-secret-demo-partner", B: "other-partner.dev-secret-other-partner"}


def auth(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


class NotifyProcess:
    """One `python -m services.notify` on a free port with its own database."""

    def __init__(self, infra: dict[str, Any], database: str, log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": infra["kafka_bootstrap"],
            "MONGO_URI": infra["mongo_uri"],
            "TRACE_DIR": str(log.parent / "traces"),
            "DEV_MODE": "true",  # loopback receivers over http
            "NOTIFY_HTTP_PORT": str(self.port),
            "NOTIFY_MONGO_DATABASE": database,
            "NOTIFY_WEBHOOK_TIMEOUT_SECONDS": "3",
            "NOTIFY_LEASE_MARGIN_SECONDS": "1",
            "NOTIFY_BASE_BACKOFF_SECONDS": "0.2",
            "NOTIFY_MAX_BACKOFF_SECONDS": "0.5",
            "NOTIFY_MAX_ATTEMPTS": "3",
            "NOTIFY_DISPATCH_INTERVAL_SECONDS": "0.3",
            "PYTHONUNBUFFERED": "1",
            # Short group sessions: each subscriber's join and a restart's rejoin are fast.
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.notify"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("notify did not get ready: " + self.log.read_text()[-2000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.server.shutdown()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def notify(
    infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[NotifyProcess]:
    """One notify process (with its own database) for the module: the crash test
    kills and restarts it, which spares a third start-up (each takes seconds)."""
    database = f"it_notify_{uuid.uuid4().hex[:8]}"
    proc = NotifyProcess(infra, database, tmp_path_factory.mktemp("notify") / "notify.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        client, _ = connect(infra["mongo_uri"], database)
        await client.drop_database(database)
        await client.close()


async def publish(infra: dict[str, Any], event: ReportReady, header_tenant: str = "") -> str:
    event_id = str(uuid.uuid4())
    headers = ce_headers(
        event_id=event_id,
        ce_type=event.ce_type(),
        source="/it/reporting",
        tenant_id=header_tenant or event.tenant_id,
    )
    async with KafkaBroker(infra["kafka_bootstrap"]) as broker:
        await broker.start()
        await broker.publish(
            event.model_dump_json().encode(),
            topic=event.topic,
            key=event.case_id.encode(),
            headers=headers,
        )
    return event_id


async def subscribe(base: str, tenant: str, url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            f"{base}/v1/subscriptions",
            headers=auth(tenant),
            json={"url": url, "event_types": ["report.ready"]},
        )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def _true(value: bool) -> bool:
    return value


async def test_killed_between_send_and_record_gives_one_logical_delivery(
    infra: dict[str, Any], notify: NotifyProcess, receivers: list[Receiver]
) -> None:
    rx = Receiver()
    receivers.append(rx)
    rx.hold = killed = threading.Event()
    proc = notify
    sub = await subscribe(proc.url, A, rx.url)
    case_id = f"case-kill-{uuid.uuid4().hex[:8]}"
    await publish(infra, ready_event(A, case_id))
    await eventually(lambda: _true(rx.got_request.is_set()), within=45)
    proc.kill()  # the receiver holds its answer: the attempt cannot have been recorded
    killed.set()
    client, mongo = connect(infra["mongo_uri"], proc.env["NOTIFY_MONGO_DATABASE"])
    try:
        doc = await mongo["deliveries"].find_one({"case_id": case_id})
        assert doc is not None and doc["state"] == "pending" and doc["attempts"] == []
        assert doc.get("in_flight")  # the send had started
        proc.start()

        async def finished() -> Doc | None:
            d = await mongo["deliveries"].find_one({"case_id": case_id})
            return d if d and d["state"] != "pending" else None

        doc = await eventually(finished, within=30)
    finally:
        await client.close()
    assert doc["state"] == "delivered"
    assert [a["status"] for a in doc["attempts"]] == [None, 204]
    assert doc["attempts"][0]["error"] == "interrupted: outcome unknown"
    # The partner saw the same webhook-id twice and de-duplicates by it.
    assert rx.webhook_ids() == [doc["_id"], doc["_id"]]
    for headers, body in rx.requests:
        assert Webhook(sub["secret"]).verify(body, headers)["data"]["case_id"] == case_id


async def test_events_from_kafka_reach_only_their_tenant_and_resend_works(
    infra: dict[str, Any], notify: NotifyProcess, receivers: list[Receiver], http: httpx.AsyncClient
) -> None:
    async def call(method: str, path: str, tenant: str, **kw: Any) -> httpx.Response:
        return await http.request(method, f"{notify.url}{path}", headers=auth(tenant), **kw)

    rx_a, rx_b = Receiver(), Receiver([503] * 3)
    receivers += [rx_a, rx_b]
    sub_a = await subscribe(notify.url, A, rx_a.url)
    sub_b = await subscribe(notify.url, B, rx_b.url)
    sb = sub_b["subscription_id"]
    # The API's per-tenant scoping, rotation, pause and delete: test_notify_api.py.

    case_a, case_b = f"case-a-{uuid.uuid4().hex[:8]}", f"case-b-{uuid.uuid4().hex[:8]}"
    await publish(infra, ready_event(A, case_a))
    # A forged tenant header (B's) on A's event is dead-lettered by the consumer.
    await publish(infra, ready_event(A, f"forged-{case_a}"), header_tenant=B)
    await publish(infra, ready_event(B, case_b))

    async def b_dead_lettered() -> list[Any]:
        r = await call("GET", "/v1/deliveries", B, params={"state": "dead_letter"})
        return list(r.json())

    [dead] = await eventually(b_dead_lettered, within=45)
    await eventually(lambda: _true(len(rx_a.requests) == 1))
    headers, body = rx_a.requests[0]
    assert Webhook(sub_a["secret"]).verify(body, headers)["data"]["case_id"] == case_a
    assert {h["webhook-id"] for h, _ in rx_b.requests} == {dead["delivery_id"]}
    assert all(case_a not in b.decode() for _, b in rx_b.requests)  # B never saw A's event
    assert [a["status"] for a in dead["attempts"]] == [503, 503, 503]
    assert dead["case_id"] == case_b
    a_cases = {d["case_id"] for d in (await call("GET", "/v1/deliveries", A)).json()}
    assert case_a in a_cases and case_b not in a_cases

    # B's receiver recovered: resend its dead letters through the API.
    resent = await call("POST", f"/v1/subscriptions/{sb}/resend-dead-letters", B)
    assert resent.json() == {"resent": 1}
    one = f"/v1/deliveries/{dead['delivery_id']}"

    async def b_delivered() -> Any:
        r = (await call("GET", one, B)).json()
        return r if r["state"] == "delivered" else None

    done = await eventually(b_delivered)
    assert [a["status"] for a in done["attempts"]] == [503, 503, 503, 204]
    assert (await call("GET", one, A)).status_code == 404
    assert (await call("POST", f"{one}/resend", A)).status_code == 404

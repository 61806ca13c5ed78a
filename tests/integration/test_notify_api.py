"""notify's HTTP API in-process (create_service with a ManualClock, the real
database, no broker needed): every call is scoped to the caller's tenant, a
secret is shown once, refused URLs and addresses answer 422, rotation, pause
and the soft delete. What only a real broker and a real process show (events
from Kafka, a forged tenant header, the SIGKILL between send and record) stays
in test_notify_service.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest_asyncio

from services.notify.app import create_service
from services.notify.settings import NotifySettings
from shared.clock import ManualClock
from shared.store import connect

A, B = "demo-health", "other-clinic"
KEYS = {A: "demo-partner.dev-secret-demo-partner", B: "other-partner.dev-secret-other-partner"}
NOON = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def auth(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


@pytest_asyncio.fixture(loop_scope="session")
async def api(infra: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    database = f"it_notify_api_{uuid.uuid4().hex[:8]}"
    settings = NotifySettings(
        dev_mode=True,
        kafka_bootstrap=infra["kafka_bootstrap"],
        mongo_uri=infra["mongo_uri"],
        mongo_database=database,
    )
    service = create_service(settings, ManualClock(NOON))
    transport = httpx.ASGITransport(app=service.api)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://notify") as client:
            yield client
    finally:
        client_, _ = connect(infra["mongo_uri"], database)
        await client_.drop_database(database)
        await client_.close()
        await service.client.close()


async def test_the_api_is_per_tenant_and_delete_keeps_the_record(api: httpx.AsyncClient) -> None:
    async def call(method: str, path: str, tenant: str, **kw: Any) -> httpx.Response:
        return await api.request(method, path, headers=auth(tenant), **kw)

    made = await call("POST", "/v1/subscriptions", A, json={"url": "http://127.0.0.1:9/Hook?x=1"})
    assert made.status_code == 201, made.text
    sub = made.json()
    assert sub["secret"].startswith("whsec_") and sub["url"] == "http://127.0.0.1:9/Hook?x=1"
    path = f"/v1/subscriptions/{sub['subscription_id']}"
    # Tenant B cannot see, change, rotate or delete A's subscription.
    assert (await call("GET", path, B)).status_code == 404
    assert (await call("PATCH", path, B, json={"active": False})).status_code == 404
    assert (await call("POST", f"{path}/rotate-secret", B)).status_code == 404
    assert (await call("DELETE", path, B)).status_code == 404
    assert (await call("GET", "/v1/subscriptions", B)).json() == []
    [listed] = (await call("GET", "/v1/subscriptions", A)).json()
    assert listed["subscription_id"] == sub["subscription_id"] and listed["secret"] == ""
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://127.0.0.1:18990/x\r\nX: 1",
    ):
        refused = await call("POST", "/v1/subscriptions", A, json={"url": url})
        assert refused.status_code == 422, (url, refused.text)
    for email in ("dr\u202e.who@clinic.example", "dr.who@clinic.example\n"):
        refused = await call("POST", "/v1/subscriptions", A, json={"email": email})
        assert refused.status_code == 422, (email, refused.text)

    rotated = (await call("POST", f"{path}/rotate-secret", A)).json()
    assert rotated["secret"] != sub["secret"]
    assert rotated["previous_secret_expires_at"] == ["2026-11-21T12:00:00Z"]  # the clock's
    paused = await call("PATCH", path, A, json={"active": False})
    assert paused.json()["active"] is False
    assert (await call("DELETE", path, A)).status_code == 204
    assert (await call("GET", path, A)).status_code == 404
    assert (await call("DELETE", path, A)).status_code == 404
    assert (await call("GET", "/v1/subscriptions", A)).json() == []


async def test_a_sequence_beyond_int64_is_refused_on_the_field(api: httpx.AsyncClient) -> None:
    """Schemathesis sent sequence=523471468622990606336 and got a 500 (BSON has no
    integer that large); now the parameter's bound answers first."""
    huge = str(2**69)
    resp = await api.get("/v1/deliveries", params={"sequence": huge}, headers=auth(A))
    assert resp.status_code == 422, resp.text
    assert "sequence" in resp.text
    ok = await api.get("/v1/deliveries", params={"sequence": str(2**63 - 1)}, headers=auth(A))
    assert ok.status_code == 200 and ok.json() == []

"""Cross-tenant reads and writes are refused: what tenant A (demo-health)
created — a case, its records progress, its signed report, a subscription and
its deliveries — does not exist for tenant B (other-clinic): 404, or 403 where
the caller's role may not act at all."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RunningStack
from tests.security.conftest import Canary, auth

pytestmark = pytest.mark.security
REFUSED = (403, 404)


def refused(resp: httpx.Response) -> bool:
    return resp.status_code in REFUSED


def test_cases_of_another_tenant_cannot_be_read_or_changed(
    running_stack: RunningStack, canary: Canary
) -> None:
    intake = running_stack.urls["intake"]
    own = httpx.get(f"{intake}/v1/cases/{canary.case_id}", headers=auth("demo-int"))
    assert own.status_code == 200
    with httpx.Client(base_url=intake, headers=auth("other-int"), timeout=10) as b:
        assert refused(b.get(f"/v1/cases/{canary.case_id}"))
        body = {"provider_id": "st-mary-imaging"}
        assert refused(b.post(f"/v1/cases/{canary.case_id}/authorizations", json=body))
        listed = b.get("/v1/cases", params={"limit": 500}).json()
        assert canary.case_id not in {c["case_id"] for c in listed}
        # The same external id from tenant B is B's own case, never A's.
        again = b.post("/v1/cases", json={"external_id": canary.external_id})
        assert again.status_code == 422


def test_records_progress_of_another_tenant_is_not_found(
    running_stack: RunningStack, canary: Canary
) -> None:
    records = running_stack.urls["records_fetch"]
    for view in ("progress", "manifest"):
        url = f"{records}/v1/cases/{canary.case_id}/{view}"
        assert httpx.get(url, headers=auth("demo-int")).status_code == 200
        assert refused(httpx.get(url, headers=auth("other-int")))


def test_reports_of_another_tenant_cannot_be_read(
    running_stack: RunningStack, canary: Canary
) -> None:
    reporting = running_stack.urls["reporting"]
    base = f"{reporting}/v1/reports/{canary.report_id}"
    assert httpx.get(base, headers=auth("demo-partner")).status_code == 200
    for suffix in ("", "/signature", "/fhir", "/pdf"):
        assert refused(httpx.get(base + suffix, headers=auth("other-partner"))), suffix
        # A reviewer who did not write it does not see it either.
        assert refused(httpx.get(base + suffix, headers=auth("rev-msk-1"))), suffix
    addendum = {"question": "Any change?", "answer": "No."}
    assert refused(httpx.post(f"{base}/addenda", json=addendum, headers=auth("rev-msk-1")))


def test_subscriptions_and_deliveries_of_another_tenant_are_not_found(
    running_stack: RunningStack, canary: Canary
) -> None:
    notify = running_stack.urls["notify"]
    sub = canary.subscription_id
    assert canary.delivery_ids
    with httpx.Client(base_url=notify, headers=auth("other-partner"), timeout=10) as b:
        assert refused(b.get(f"/v1/subscriptions/{sub}"))
        assert refused(b.patch(f"/v1/subscriptions/{sub}", json={"active": False}))
        assert refused(b.post(f"/v1/subscriptions/{sub}/rotate-secret"))
        assert refused(b.post(f"/v1/subscriptions/{sub}/resend-dead-letters"))
        assert refused(b.delete(f"/v1/subscriptions/{sub}"))
        assert sub not in {s["subscription_id"] for s in b.get("/v1/subscriptions").json()}
        for delivery_id in canary.delivery_ids:
            assert refused(b.get(f"/v1/deliveries/{delivery_id}"))
            assert refused(b.post(f"/v1/deliveries/{delivery_id}/resend"))
        assert b.get("/v1/deliveries", params={"case_id": canary.case_id}).json() == []
        assert b.get("/v1/deliveries", params={"subscription_id": sub}).json() == []
    # Tenant A's subscription survived every attempt unchanged.
    own = httpx.get(f"{notify}/v1/subscriptions/{sub}", headers=auth("demo-partner"))
    assert own.status_code == 200 and own.json()["active"] is True

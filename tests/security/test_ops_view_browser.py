"""The operations view in a real browser: Playwright (the Python package) driving
Debian's Chromium (/usr/bin/chromium, never a downloaded browser) against the
whole system as processes (`running_stack`), reusing the canary case this tier
already drives to a delivered report, so the pages are checked on real traces.

- an unassignable case (no rheumatology reviewer on the demo roster) is red with its reason,
  and its subspecialty is a capacity alert;
- a case intake holds for human review appears and is released from the page
  (assignment forwards the operator's key to intake, which emits case.accepted);
- a filter narrows the list;
- the canary's case page shows spans of all five services and none of its PHI;
- an open assignment is reassigned from its case page (an ineligible reviewer
  refused with the reason, 409);
- a dead-lettered delivery (a partner endpoint refusing) is resent from its case
  page through notify and delivered;
- the JSON API and the metrics carry the same states.

Screenshots: test-artifacts/ops-*.png.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.demo import auth, sample_case
from shared.events import (
    CaseStatusChanged,
    ManifestItem,
    RecordsComplete,
    RecordsIncomplete,
    RoutingContext,
)
from tests.browser.assignment_service import publish
from tests.conftest import REPO, RunningStack
from tests.security.conftest import CANARY_BIRTH, CANARY_MRN, CANARY_NAME, Canary

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
OPS_KEY = "ops.dev-secret-ops"
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("deploy/local/install_browser.sh installs Debian's chromium")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ops-{name}.png"), full_page=True)


def publish_now(bootstrap: str, event: Any) -> None:
    """Publish from a thread: Playwright's sync API runs an event loop of its own here."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish(bootstrap, event)).result(timeout=30)


def board(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/ops/cases", headers=auth("ops"), timeout=10)
    r.raise_for_status()
    return dict(r.json())


def test_a_case_page_shows_spans_of_all_five_services_and_no_phi(
    running_stack: RunningStack, canary: Canary, browser: Any
) -> None:
    url = running_stack.urls["assignment"]
    page = browser.new_page(viewport={"width": 1500, "height": 1200})
    page.goto(f"{url}/dashboard/case?id={canary.case_id}#key={OPS_KEY}")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    services = set(
        page.eval_on_selector_all("#waterfall .span", "rows => rows.map(r => r.dataset.service)")
    )
    assert services >= {"intake", "records_fetch", "assignment", "reporting", "notify"}, services
    timeline = page.locator("#timeline").inner_text()
    assert "report.ready" in timeline and "notification.delivered" in timeline
    links = page.eval_on_selector_all("#links a", "as => as.map(a => a.href)")
    assert any(link.endswith(f"/v1/cases/{canary.case_id}/manifest") for link in links)
    assert any(f"/v1/reports/{canary.report_id}" in link for link in links)
    text = page.content()
    for phi in (CANARY_NAME, CANARY_BIRTH, CANARY_MRN):
        assert phi not in text
    shot(page, "case")
    journey = httpx.get(f"{url}/v1/ops/cases/{canary.case_id}", headers=auth("ops"), timeout=10)
    assert CANARY_NAME not in json.dumps(journey.json())
    page.close()


def test_stuck_cases_are_red_held_is_released_and_filters_narrow(
    running_stack: RunningStack, browser: Any
) -> None:
    urls = running_stack.urls
    bootstrap = running_stack.infra["kafka_bootstrap"]
    # 1. Unassignable: records complete for a subspecialty nobody on the roster has.
    unassignable = f"case-ops-{uuid.uuid4().hex[:10]}"
    routing = RoutingContext(subspecialties=["rheumatology"], jurisdiction="US-NY")
    publish_now(
        bootstrap,
        RecordsComplete(
            case_id=unassignable,
            tenant_id="other-clinic",
            routing=routing,
            manifest=[ManifestItem(kind="notes", present=True, count=1)],
            completed_at=datetime.now(UTC),
        ),
    )
    # 2. Held: intake holds a controlled-substance request; its case.status is what
    # intake publishes on a stage change (shared/events.py CaseStatusChanged).
    ext = f"ops-held-{uuid.uuid4().hex[:8]}"
    case = sample_case(
        ext,
        "My doctor refused to refill my oxycodone; I want a second opinion to renew it",
        "MRN-OPS1",
        "clinic-ops-1",
        "Valley Clinic",
        "Chronic pain",
    )
    r = httpx.post(f"{urls['intake']}/v1/cases", json=case, headers=auth("demo-int"), timeout=10)
    assert r.status_code == 201, r.text
    held = r.json()["case_id"]
    assert r.json()["stage"] == "held_for_review"
    publish_now(
        bootstrap,
        CaseStatusChanged(
            case_id=held,
            tenant_id="demo-health",
            stage="held_for_review",
            previous_stage="received",
            waiting_for=["held for human review: controlled substance request"],
            subspecialties=["general_internal_medicine"],
            changed_at=datetime.now(UTC),
        ),
    )
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(f"{urls['assignment']}/dashboard/ops#key={OPS_KEY}")
    red = page.locator(f'tr[data-case-id="{unassignable}"]')
    red.wait_for(timeout=30_000)
    page.locator(f'tr[data-case-id="{held}"]').wait_for(timeout=30_000)
    assert red.get_attribute("data-state") == "unassignable"
    assert red.get_attribute("data-severity") == "red"
    assert "no eligible rheumatology reviewer" in red.inner_text()
    assert "rgb(220, 38, 38)" in red.locator(".badge").evaluate(
        "e => getComputedStyle(e).backgroundColor"
    )
    assert (
        "need rheumatology in US-NY: no eligible reviewer" in page.locator("#alerts").inner_text()
    )
    row = page.locator(f'tr[data-case-id="{held}"]')
    assert row.get_attribute("data-state") == "held_for_review"
    shot(page, "board")
    # The JSON API and the metrics carry the same states.
    states = {c["case_id"]: c["state"] for c in board(urls["assignment"])["cases"]}
    assert states[unassignable] == "unassignable" and states[held] == "held_for_review"
    metrics = httpx.get(f"{urls['assignment']}/metrics", timeout=10).text
    assert (
        'assignment_ops_cases{stage="assignment",state="unassignable",tenant="other-clinic"}'
        in (metrics)
    )
    assert (
        'assignment_specialty_eligible_reviewers{jurisdiction="US-NY",'
        'subspecialty="rheumatology"} 0.0' in (metrics)
    )
    # A filter narrows the list.
    before = page.locator("#cases tbody tr").count()
    page.fill("#f-tenant", "other-clinic")
    page.click("#filters button")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#cases tbody tr')]"
        ".every(r => r.children[2].textContent === 'other-clinic')",
        timeout=10_000,
    )
    after = page.locator("#cases tbody tr").count()
    assert 1 <= after < before
    shot(page, "filtered")
    # Release the held case from the page: intake accepts it, the row leaves "held".
    page.fill("#f-tenant", "")
    page.click("#filters button")
    page.locator(f'tr[data-case-id="{held}"] button.release').click()
    page.wait_for_function(
        f"() => {{ const r = document.querySelector('tr[data-case-id=\"{held}\"]');"
        " return !r || r.dataset.state !== 'held_for_review'; }",
        timeout=30_000,
        polling=500,
    )
    status = httpx.get(f"{urls['intake']}/v1/cases/{held}", headers=auth("demo-int")).json()
    assert status["stage"] != "held_for_review"
    shot(page, "released")
    page.close()


def _states_in_metrics(text: str) -> Counter[str]:
    states: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "assignment_ops_cases":
            for sample in family.samples:
                states[sample.labels["state"]] += int(sample.value)
    return states


def test_an_open_assignment_is_reassigned_from_the_case_page(
    running_stack: RunningStack, browser: Any
) -> None:
    """The case page lists the open assignment; naming an ineligible reviewer is
    refused with the reason (409); naming the other neuroradiologist hands it over,
    recorded as escalated by the operator."""
    urls = running_stack.urls
    url = urls["assignment"]
    case_id = f"case-ops-re-{uuid.uuid4().hex[:10]}"
    routing = RoutingContext(subspecialties=["neuroradiology"], jurisdiction="US-CA")
    publish_now(
        running_stack.infra["kafka_bootstrap"],
        RecordsComplete(
            case_id=case_id,
            tenant_id="demo-health",
            routing=routing,
            manifest=[ManifestItem(kind="imaging", present=True, count=1)],
            completed_at=datetime.now(UTC),
        ),
    )
    first = ""
    for _ in range(60):
        r = httpx.get(f"{url}/v1/cases/{case_id}/assignments", headers=auth("ops"), timeout=10)
        if r.status_code == 200 and r.json()[0]["state"] == "offered":
            first = r.json()[0]["reviewer_id"]
            break
        time.sleep(0.5)
    assert first in {"rev-neuro-1", "rev-neuro-2"}, first
    other = ({"rev-neuro-1", "rev-neuro-2"} - {first}).pop()
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(f"{url}/dashboard/case?id={case_id}#key={OPS_KEY}")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    row = page.locator('#assignments tr[data-subspecialty="neuroradiology"]')
    assert row.get_attribute("data-reviewer") == first
    # An ineligible reviewer: refused, with assignment's reason on the page.
    row.locator(".reassign-reason").fill("reviewer on leave")
    row.locator(".reassign-to").fill("rev-msk-1")
    row.locator("button.reassign").click()
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    error = page.locator("#error").inner_text()
    assert "409" in error and "rev-msk-1: not a neuroradiology reviewer" in error, error
    shot(page, "reassign-refused")
    # The other neuroradiologist: handed over.
    row.locator(".reassign-to").fill(other)
    row.locator("button.reassign").click()
    page.wait_for_selector(
        f'#assignments tr[data-subspecialty="neuroradiology"][data-reviewer="{other}"]',
        timeout=10_000,
    )
    shot(page, "reassigned")
    page.close()
    (a,) = httpx.get(
        f"{url}/v1/cases/{case_id}/assignments", headers=auth("ops"), timeout=10
    ).json()
    assert a["reviewer_id"] == other and a["state"] == "offered"
    assert [(h["reviewer_id"], h["outcome"], h["reason"]) for h in a["history"]] == [
        (first, "escalated", "operations:ops: reviewer on leave")
    ]
    # Audited: assignment's trail names the operator's key and the call.
    trail = httpx.get(
        f"{url}/v1/audit", params={"case_id": case_id}, headers=auth("ops"), timeout=10
    )
    assert trail.status_code == 200, trail.text
    calls = [
        (e["resource"]["agent"][0]["who"]["identifier"]["value"], e["resource"]["outcome"])
        for e in trail.json()["entry"]
        if "POST /v1/ops/cases/{case_id}/reassign" in json.dumps(e["resource"]["entity"])
    ]
    assert calls.count(("ops", "0")) == 1 and len(calls) == 2, calls  # the 409 and the 200


class _Partner(BaseHTTPRequestHandler):
    """A partner's webhook endpoint: refuses (400, a permanent failure: notify
    dead-letters at once) until `accept` is set."""

    accept = False
    received: list[int] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 204 if _Partner.accept else 400
        _Partner.received.append(status)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _until(check: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds} s")


def test_a_dead_lettered_delivery_is_resent_from_the_case_page(
    running_stack: RunningStack, browser: Any
) -> None:
    """On the real stack: a partner endpoint refuses a records.incomplete webhook,
    notify dead-letters it, the case page shows it with a Resend button; the
    endpoint is fixed, the button (assignment forwarding the operator's key to
    notify) resends it and notify delivers it."""
    urls = running_stack.urls
    url = urls["assignment"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Partner)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Partner.accept, _Partner.received = False, []
    partner = auth("other-partner")
    sub = httpx.post(
        f"{urls['notify']}/v1/subscriptions",
        headers=partner,
        json={
            "url": f"http://127.0.0.1:{server.server_address[1]}/hook",
            "event_types": ["records.incomplete"],
        },
        timeout=10,
    )
    assert sub.status_code == 201, sub.text
    sub_id = sub.json()["subscription_id"]
    case_id = f"case-ops-dl-{uuid.uuid4().hex[:10]}"
    try:
        publish_now(
            running_stack.infra["kafka_bootstrap"],
            RecordsIncomplete(
                case_id=case_id,
                tenant_id="other-clinic",
                missing=[ManifestItem(kind="imaging", present=False, detail="no study found")],
            ),
        )

        def failed() -> list[str]:
            r = httpx.get(f"{url}/v1/ops/cases/{case_id}", headers=auth("ops"), timeout=10)
            return list(r.json()["case"]["delivery_failed"]) if r.status_code == 200 else []

        (delivery,) = _until(failed)
        assert _Partner.received == [400]
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(f"{url}/dashboard/case?id={case_id}#key={OPS_KEY}")
        page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
        assert page.locator("#summary .badge").get_attribute("data-state") == "delivery_failed"
        shot(page, "dead-letter")
        _Partner.accept = True  # the partner fixed its endpoint
        page.locator(f'button.resend[data-delivery="{delivery}"]').click()
        _until(lambda: not failed())
        assert _Partner.received == [400, 204]
        done = httpx.get(f"{urls['notify']}/v1/deliveries/{delivery}", headers=partner, timeout=10)
        assert done.json()["state"] == "delivered" and done.json()["resends"] == 1, done.text
        page.reload()
        page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
        assert page.locator("button.resend").count() == 0
        shot(page, "resent")
        page.close()
        # notify's own trail records the operator's resend (assignment forwarded the key).
        trail = httpx.get(
            f"{urls['notify']}/v1/audit", params={"key_id": "ops"}, headers=auth("ops"), timeout=10
        ).json()
        assert any(
            "/v1/operations/deliveries/{delivery_id}/resend" in json.dumps(e["resource"]["entity"])
            and delivery in json.dumps(e["resource"]["entity"])
            for e in trail["entry"]
        )
    finally:
        httpx.delete(f"{urls['notify']}/v1/subscriptions/{sub_id}", headers=partner, timeout=10)
        server.shutdown()
        server.server_close()


def test_the_json_api_and_the_metrics_carry_the_same_states(running_stack: RunningStack) -> None:
    """Counts by state on /v1/ops/cases (no filter) and assignment_ops_cases on
    /metrics agree (both from one board computation; the timer loop recomputes it,
    so a case moving in between is retried, not excused). Runs after the tests
    above, on the cases they left open."""
    url = running_stack.urls["assignment"]
    seen: list[tuple[Counter[str], Counter[str]]] = []
    for _ in range(5):
        api_states = Counter(c["state"] for c in board(url)["cases"])
        metric_states = _states_in_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
        seen.append((api_states, metric_states))
        if api_states == metric_states and sum(api_states.values()) > 0:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"JSON and metrics states differ: {seen}")

"""The SLA dashboard in a real browser (Debian's headless Chromium): an at-risk
case is shown as such. The screenshot is kept under test-artifacts/."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio

from shared.events import FirstOpinionSource, ManifestItem, RecordsComplete, RoutingContext
from tests.browser.assignment_service import (
    OPS,
    REPO,
    AssignmentProcess,
    publish,
    reviewer_auth,
)
from tests.conftest import eventually

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# infra.md: headless, no sandbox (root in CI), no network chatter of its own.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1400,900",
    # Let the page's fetch of /v1/dashboard finish before the DOM is dumped.
    "--virtual-time-budget=8000",
]


def chromium(profile: Path, *args: str) -> str:
    out = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return out.stdout


@pytest_asyncio.fixture(loop_scope="session")
async def service(infra: dict[str, Any], tmp_path: Path) -> AsyncIterator[AssignmentProcess]:
    proc = AssignmentProcess(infra, tmp_path)
    try:
        yield proc
    finally:
        proc.kill()
        await proc.drop_database()


async def open_case(service: AssignmentProcess, case_id: str) -> dict[str, Any]:
    routing = RoutingContext(
        subspecialties=["body_imaging"],
        service_tier="imaging_reread",
        jurisdiction="US-NY",
        first_opinion=FirstOpinionSource(institution="Valley Urology"),
    )
    event = RecordsComplete(
        case_id=case_id,
        tenant_id="demo-health",
        routing=routing,
        manifest=[ManifestItem(kind="imaging", present=True, count=1)],
        completed_at=datetime(2026, 11, 16, 14, tzinfo=ZoneInfo("UTC")),
    )
    await publish(service.infra["kafka_bootstrap"], event)

    async def assigned() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{service.url}/v1/cases/{case_id}/assignments", headers=OPS)
            return r.json() if r.status_code == 200 else []

    (a,) = await eventually(assigned, within=30)
    async with httpx.AsyncClient(timeout=5) as c:
        url = f"{service.url}/v1/reviewer/assignments/{a['assignment_id']}/accept"
        (await c.post(url, headers=reviewer_auth(a["reviewer_id"]))).raise_for_status()
    return a


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="deploy/local/install_browser.sh")
async def test_dashboard_shows_an_at_risk_case(service: AssignmentProcess, tmp_path: Path) -> None:
    case_id = f"case-ui-{uuid.uuid4().hex[:10]}"
    service.set_clock(datetime(2026, 11, 16, 9, tzinfo=NY))
    service.start()
    await open_case(service, case_id)
    # Wednesday 12:00: 19 of 24 business hours used (79 %, at risk from 75 %).
    service.set_clock(datetime(2026, 11, 18, 12, tzinfo=NY))
    page = f"{service.url}/dashboard#key=ops.dev-secret-ops"
    dom = chromium(tmp_path / "profile", "--dump-dom", page)
    assert 'data-loaded="true"' in dom, dom[-2000:]
    row = dom[dom.index(f'data-case-id="{case_id}"') :].split("</tr>")[0]
    assert 'data-status="at_risk"' in row and "AT RISK" in row and "5.0" in row
    assert 'id="n-at-risk">1<' in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "assignment-dashboard.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", page)
    assert shot.stat().st_size > 10_000
    async with httpx.AsyncClient(timeout=5) as c:  # the page holds no data itself
        js = await c.get(f"{service.url}/dashboard/static/dashboard.js")
        assert js.status_code == 200 and "https://" not in js.text  # nothing from a CDN
        assert (await c.get(f"{service.url}/v1/dashboard")).status_code == 401
        rev = await c.get(f"{service.url}/v1/dashboard", headers=reviewer_auth("rev-body-1"))
        assert rev.status_code == 403

"""The review clock against the real broker and database, with the service as a
real process and an injected clock: a deadline passes while the service is
down (SIGKILLed), and on restart the breach fires exactly once. The handlers'
flow (decline, roster change, pause, report) runs in process on the real
database with a ManualClock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest_asyncio

from services.assignment import handlers
from shared.events import (
    FirstOpinionSource,
    ManifestItem,
    RecordsComplete,
    RecordsIncomplete,
    ReportSubmitted,
    RoutingContext,
)
from tests.browser.assignment_service import (
    OPS,
    AssignmentProcess,
    InProcessAssignment,
    TopicLog,
    event_meta,
    publish,
    reviewer_auth,
)
from tests.conftest import eventually

NY = ZoneInfo("America/New_York")
TOPICS = ["case.assigned", "sla.warning", "sla.breached", "case.reassigned"]


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


def records_complete(case_id: str, **routing: Any) -> RecordsComplete:
    ctx: dict[str, Any] = {
        "subspecialties": ["neuroradiology"],
        "service_tier": "imaging_reread",
        "jurisdiction": "US-CA",
        "first_opinion": FirstOpinionSource(
            institution="Lone Star Radiology", affiliations=["Lone Star Radiology"]
        ),
        **routing,
    }
    return RecordsComplete(
        case_id=case_id,
        tenant_id="demo-health",
        routing=RoutingContext.model_validate(ctx),
        manifest=[ManifestItem(kind="imaging", present=True, count=2)],
        completed_at=datetime.now(UTC),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def service(infra: dict[str, Any], tmp_path: Path) -> AsyncIterator[AssignmentProcess]:
    proc = AssignmentProcess(infra, tmp_path)
    try:
        yield proc
    finally:
        proc.kill()
        await proc.drop_database()


async def assignments(svc: AssignmentProcess, case_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(f"{svc.url}/v1/cases/{case_id}/assignments", headers=OPS)
        return r.json() if r.status_code == 200 else []


async def test_restart_across_the_deadline_fires_one_breach(service: AssignmentProcess) -> None:
    case_id = f"case-it-{uuid.uuid4().hex[:12]}"
    service.set_clock(ny(2026, 11, 16, 9))  # Monday 09:00; 24 business hours: Wed 17:00
    service.start()
    bootstrap = service.infra["kafka_bootstrap"]
    async with TopicLog(bootstrap, TOPICS) as log:
        await publish(bootstrap, records_complete(case_id))
        (a,) = await eventually(lambda: assignments(service, case_id), within=30)
        # Independence: the first reader's group is excluded, with the reason kept.
        assert a["reviewer_id"] == "rev-neuro-1", a.get("excluded")
        assert "not independent" in a["excluded"]["rev-neuro-2"]
        assert datetime.fromisoformat(a["due_at"]) == ny(2026, 11, 18, 17)
        async with httpx.AsyncClient(timeout=5) as client:
            url = f"{service.url}/v1/reviewer/assignments/{a['assignment_id']}/accept"
            r = await client.post(url, headers=reviewer_auth("rev-neuro-1"))
            assert r.status_code == 200 and r.json()["state"] == "accepted"

        # Tuesday 13:00: half the budget used; the live loop warns once.
        service.set_clock(ny(2026, 11, 17, 13))
        warned = await eventually(lambda: _of(log, "sla.warning", case_id), within=20)
        assert [w["fraction_elapsed"] for w in warned] == [0.5]

        # Crash, and stay down across the deadline.
        service.kill()
        service.set_clock(ny(2026, 11, 18, 17, 30))
        service.start()
        breached = await eventually(lambda: _of(log, "sla.breached", case_id), within=30)
        assert breached[0]["escalation_level"] == 0
        assert datetime.fromisoformat(breached[0]["due_at"]) == ny(2026, 11, 18, 17)

        # Restart once more after the breach was published: nothing fires twice.
        service.kill()
        service.start()
        ticks = service.ticks()
        await eventually(lambda: _async(service.ticks() >= ticks + 3), within=20)
        (a,) = await assignments(service, case_id)
        assert a["fired"].count("breach") == 1
        assert len(log.of("sla.breached", case_id)) == 1
        # The stale 75 % / 90 % warnings were skipped (the breach said more).
        assert len(log.of("sla.warning", case_id)) == 1
        assert len(log.of("case.assigned", case_id)) == 1


async def _of(log: TopicLog, topic: str, case_id: str) -> list[dict[str, Any]]:
    return log.of(topic, case_id)


async def _async(value: bool) -> bool:
    return value


@pytest_asyncio.fixture(loop_scope="session")
async def inproc(infra: dict[str, Any], tmp_path: Path) -> AsyncIterator[InProcessAssignment]:
    svc = InProcessAssignment(infra, tmp_path, ny(2026, 11, 16, 9))
    try:
        await svc.load_roster()
        yield svc
    finally:
        await svc.close()


async def test_multi_specialist_decline_pause_report_and_metrics(
    inproc: InProcessAssignment,
) -> None:
    """One reviewer per subspecialty; a decline goes to the next eligible reviewer
    (case.reassigned and a fresh case.assigned); no eligible reviewer → unassignable,
    until a roster change brings one; records re-requested pause the clock; the
    report closes the assignment. In process: nothing here needs the process's life."""
    svc, client = inproc, inproc.http
    store, policy, clock = svc.store, svc.policy, svc.clock
    case_id = f"case-it-{uuid.uuid4().hex[:12]}"
    lonely = f"case-it-{uuid.uuid4().hex[:12]}"
    multi = records_complete(
        case_id,
        subspecialties=["neuroradiology", "pathology"],
        service_tier="multi_specialist",
        jurisdiction="US-CA",
    )
    await handlers.assign_case(store, policy, clock.now(), multi, event_meta())
    alone_event = records_complete(lonely, jurisdiction="US-WY")
    await handlers.assign_case(store, policy, clock.now(), alone_event, event_meta())

    parts = await inproc_assignments(svc, case_id)
    by_sub = {a["subspecialty"]: a for a in parts}
    # Two idle pathologists are licensed in US-CA (rev-path-1, rev-hemepath-1): the
    # tie goes to the lower reviewer id (domain.choose_reviewer).
    assert by_sub["pathology"]["reviewer_id"] == "rev-hemepath-1"
    neuro = by_sub["neuroradiology"]
    assert neuro["reviewer_id"] == "rev-neuro-1"
    (alone,) = await inproc_assignments(svc, lonely)
    assert alone["state"] == "unassignable"
    assert alone["excluded"]["rev-neuro-1"] == "not licensed in US-WY"
    unassignable = await svc.emitted("case.unassignable", lonely)
    assert unassignable[0]["reason"] == "no eligible neuroradiology reviewer"

    # The only other neuroradiologist shares the first reader's group: a
    # decline leaves this part unassignable, with both reasons recorded.
    clock.advance(timedelta(minutes=10))
    url = f"/v1/reviewer/assignments/{neuro['assignment_id']}/decline"
    r = await client.post(url, json={"reason": "on leave"}, headers=reviewer_auth("rev-neuro-1"))
    assert r.status_code == 200 and r.json()["state"] == "unassignable"
    assert r.json()["excluded"]["rev-neuro-1"] == "declined this case earlier"
    (moved,) = await svc.emitted("case.reassigned", case_id)
    assert moved["from_reviewer_id"] == "rev-neuro-1" and moved["to_reviewer_id"] == ""
    # Operations add a reviewer: the roster change re-offers the waiting part at
    # once (issue 21), a fresh case.assigned.
    new = {
        "reviewer_id": "rev-neuro-3",
        "name": "Dr. New",
        "subspecialties": ["neuroradiology"],
        "licensed_jurisdictions": ["US-CA"],
    }
    r = await client.put("/v1/reviewers/rev-neuro-3", json=new, headers=OPS)
    assert r.status_code == 200
    (neuro_now,) = [
        a for a in await inproc_assignments(svc, case_id) if a["subspecialty"] == "neuroradiology"
    ]
    assert neuro_now["state"] == "offered" and neuro_now["reviewer_id"] == "rev-neuro-3"
    fresh = await svc.emitted("case.assigned", case_id)
    assert len({a["assignment_id"] for a in fresh}) == 3
    # Operations hand the part on again: nobody is left, it waits (unassignable).
    r = await client.post(
        f"/v1/cases/{case_id}/assignments/neuroradiology/reassign",
        json={"reason": "reviewer unavailable"},
        headers=OPS,
    )
    assert r.status_code == 200 and r.json()["state"] == "unassignable"
    assert r.json()["excluded"]["rev-neuro-3"] == "escalated this case earlier"

    # Records re-requested after assignment: every part's clock pauses.
    incomplete = RecordsIncomplete(
        case_id=case_id,
        tenant_id="demo-health",
        missing=[ManifestItem(kind="labs", present=False)],
    )
    clock.advance(timedelta(hours=1))
    await handlers.records_incomplete(store, policy, clock.now(), incomplete, event_meta())
    paused = await inproc_assignments(svc, case_id)
    assert all(p["clock"]["paused_for"] for p in paused)
    assert all(p["clock"]["pauses"][0]["reason"].startswith("waiting on records") for p in paused)

    # The records arrive after all: the same parts' clocks run again (no new parts).
    clock.advance(timedelta(hours=1))
    await handlers.assign_case(store, policy, clock.now(), multi, event_meta())
    running = await inproc_assignments(svc, case_id)
    assert {a["assignment_id"] for a in running} == {p["assignment_id"] for p in paused}
    assert all(not a["clock"]["paused_for"] for a in running)
    assert all(p["clock"]["pauses"][0]["resumed_by"] == "records complete" for p in running)

    # The pathology report is in: that part closes, its reviewer is free again.
    path = by_sub["pathology"]
    report = ReportSubmitted(
        case_id=case_id,
        tenant_id="demo-health",
        report_id="r-1",
        reviewer_id=path["reviewer_id"],
        assignment_id=path["assignment_id"],
        concordance="confirmed",
    )
    await handlers.close_assignment(store, policy, clock.now(), report, event_meta())
    states = {a["subspecialty"]: a["state"] for a in await inproc_assignments(svc, case_id)}
    assert states["pathology"] == "reported"
    r = await client.get("/v1/dashboard", headers=OPS)
    assert r.status_code == 200
    metrics = (await client.get("/metrics")).text
    assert "assignment_turnaround_hours" in metrics and "assignment_reviewer_load" in metrics
    assert case_id not in metrics and lonely not in metrics  # no case ids in labels


async def inproc_assignments(svc: InProcessAssignment, case_id: str) -> list[dict[str, Any]]:
    r = await svc.http.get(f"/v1/cases/{case_id}/assignments", headers=OPS)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found

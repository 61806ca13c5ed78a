"""The review clock against the real broker and database, with the service as a
real process and an injected clock: a deadline passes while the service is
down (SIGKILLed), and on restart the breach fires exactly once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest_asyncio

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
    TopicLog,
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


async def test_multi_specialist_decline_pause_report_and_metrics(
    service: AssignmentProcess,
) -> None:
    """One reviewer per subspecialty; a decline goes to the next eligible reviewer
    (case.reassigned and a fresh case.assigned); no eligible reviewer → unassignable;
    records re-requested pause the clock; the report closes the assignment."""
    case_id = f"case-it-{uuid.uuid4().hex[:12]}"
    lonely = f"case-it-{uuid.uuid4().hex[:12]}"
    service.set_clock(ny(2026, 11, 16, 9))
    service.start()
    bootstrap = service.infra["kafka_bootstrap"]
    async with (
        TopicLog(bootstrap, [*TOPICS, "case.unassignable"]) as log,
        httpx.AsyncClient(timeout=5) as client,
    ):
        multi = records_complete(
            case_id,
            subspecialties=["neuroradiology", "pathology"],
            service_tier="multi_specialist",
            jurisdiction="US-CA",
        )
        await publish(bootstrap, multi)
        await publish(bootstrap, records_complete(lonely, jurisdiction="US-WY"))
        parts = await eventually(lambda: _n(service, case_id, 2), within=30)
        by_sub = {a["subspecialty"]: a for a in parts}
        assert by_sub["pathology"]["reviewer_id"] == "rev-path-1"
        neuro = by_sub["neuroradiology"]
        assert neuro["reviewer_id"] == "rev-neuro-1"
        (alone,) = await eventually(lambda: assignments(service, lonely), within=30)
        assert alone["state"] == "unassignable"
        assert alone["excluded"]["rev-neuro-1"] == "not licensed in US-WY"
        unassignable = await eventually(lambda: _of(log, "case.unassignable", lonely))
        assert unassignable[0]["reason"] == "no eligible neuroradiology reviewer"

        # The only other neuroradiologist shares the first reader's group: a
        # decline leaves this part unassignable, with both reasons recorded.
        url = f"{service.url}/v1/reviewer/assignments/{neuro['assignment_id']}/decline"
        r = await client.post(
            url, json={"reason": "on leave"}, headers=reviewer_auth("rev-neuro-1")
        )
        assert r.status_code == 200 and r.json()["state"] == "unassignable"
        assert r.json()["excluded"]["rev-neuro-1"] == "declined this case earlier"
        moved = await eventually(lambda: _of(log, "case.reassigned", case_id))
        assert moved[0]["from_reviewer_id"] == "rev-neuro-1" and moved[0]["to_reviewer_id"] == ""
        # Operations add a reviewer: the roster change re-offers the waiting part
        # at once (issue 21), a fresh case.assigned.
        new = {
            "reviewer_id": "rev-neuro-3",
            "name": "Dr. New",
            "subspecialties": ["neuroradiology"],
            "licensed_jurisdictions": ["US-CA"],
        }
        r = await client.put(f"{service.url}/v1/reviewers/rev-neuro-3", json=new, headers=OPS)
        assert r.status_code == 200
        (neuro_now,) = [
            a for a in await assignments(service, case_id) if a["subspecialty"] == "neuroradiology"
        ]
        assert neuro_now["state"] == "offered" and neuro_now["reviewer_id"] == "rev-neuro-3"
        fresh = await eventually(lambda: _count(log, "case.assigned", case_id, 3))
        assert len({a["assignment_id"] for a in fresh}) == 3

        # Records re-requested after assignment: every part's clock pauses.
        incomplete = RecordsIncomplete(
            case_id=case_id,
            tenant_id="demo-health",
            missing=[ManifestItem(kind="labs", present=False)],
        )
        await publish(bootstrap, incomplete)
        paused = await eventually(lambda: _paused(service, case_id))
        assert all(
            p["clock"]["pauses"][0]["reason"].startswith("waiting on records") for p in paused
        )

        # The records arrive after all: the same parts' clocks run again (no new parts).
        await publish(bootstrap, multi)
        running = await eventually(lambda: _running(service, case_id))
        assert {a["assignment_id"] for a in running} == {p["assignment_id"] for p in paused}
        assert all(p["clock"]["pauses"][0]["resumed_by"] == "records complete" for p in running)

        # The pathology report is in: that part closes, its reviewer is free again.
        path = by_sub["pathology"]
        report = ReportSubmitted(
            case_id=case_id,
            tenant_id="demo-health",
            report_id="r-1",
            reviewer_id="rev-path-1",
            assignment_id=path["assignment_id"],
            concordance="confirmed",
        )
        await publish(bootstrap, report)
        await eventually(lambda: _state(service, case_id, "pathology", "reported"))
        metrics = (await client.get(f"{service.url}/metrics")).text
        assert "assignment_turnaround_hours" in metrics and "assignment_reviewer_load" in metrics
        assert case_id not in metrics and lonely not in metrics  # no case ids in labels


async def _n(svc: AssignmentProcess, case_id: str, n: int) -> list[dict[str, Any]]:
    found = await assignments(svc, case_id)
    return found if len(found) == n else []


async def _count(log: TopicLog, topic: str, case_id: str, n: int) -> list[dict[str, Any]]:
    found = log.of(topic, case_id)
    return found if len(found) >= n else []


async def _paused(svc: AssignmentProcess, case_id: str) -> list[dict[str, Any]]:
    found = await assignments(svc, case_id)
    return found if found and all(a["clock"]["paused_for"] for a in found) else []


async def _running(svc: AssignmentProcess, case_id: str) -> list[dict[str, Any]]:
    found = await assignments(svc, case_id)
    resumed = found and all(a["clock"]["pauses"] and not a["clock"]["paused_for"] for a in found)
    return found if resumed else []


async def _state(svc: AssignmentProcess, case_id: str, sub: str, state: str) -> bool:
    return any(
        a["subspecialty"] == sub and a["state"] == state for a in await assignments(svc, case_id)
    )

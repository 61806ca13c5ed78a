"""Issue 21, re-offer that cannot starve, on the real Mongo-wire server: cases
that can never be assigned must not hold the places of cases that only waited
for a reviewer's capacity. In process, with the handlers the subscribers and
the timer loop call and an injected time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase

from services.assignment import handlers
from services.assignment.domain import Reviewer
from services.assignment.settings import AssignmentSettings
from services.assignment.store import AssignmentStore
from shared.envelope import EventMeta
from shared.events import (
    FirstOpinionSource,
    ManifestItem,
    RecordsComplete,
    ReportSubmitted,
    RoutingContext,
)
from shared.store import Doc
from tests.browser.assignment_service import OPS, InProcessAssignment

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")
START = datetime(2026, 11, 16, 9, tzinfo=NY)  # a Monday morning
POLICY = AssignmentSettings().policy()
STUCK_FOR_GOOD = 25  # more than one re-offer pass takes
CAPACITY = 6


def meta() -> EventMeta:
    return EventMeta(
        event_id=str(uuid.uuid4()),
        ce_type="t",
        source="/it",
        time="",
        tenant_id="demo-health",
    )


def records_complete(
    case_id: str, jurisdiction: str, subspecialty: str = "neuroradiology"
) -> RecordsComplete:
    return RecordsComplete(
        case_id=case_id,
        tenant_id="demo-health",
        routing=RoutingContext(
            subspecialties=[subspecialty],
            service_tier="imaging_reread",
            jurisdiction=jurisdiction,
            first_opinion=FirstOpinionSource(institution="Lone Star Radiology"),
        ),
        manifest=[ManifestItem(kind="imaging", present=True, count=1)],
        completed_at=START,
    )


def neuroradiologist(rid: str, capacity: int = CAPACITY) -> Reviewer:
    return Reviewer(
        reviewer_id=rid,
        name=f"Dr. {rid}",
        subspecialties=["neuroradiology"],
        licensed_jurisdictions=["US-CA"],
        capacity=capacity,
    )


async def states(store: AssignmentStore, case_ids: list[str]) -> dict[str, str]:
    found = await store.find({"case_id": {"$in": case_ids}})
    return {a.case_id: a.state for a in found}


async def test_cases_stuck_for_good_do_not_starve_those_waiting_for_capacity(
    db: AsyncDatabase[Doc],
) -> None:
    store = AssignmentStore(db["reviewers"], db["assignments"])
    await store.create_indexes()
    await store.upsert_reviewers([neuroradiologist("rev-a")])
    now = START

    # Oldest: cases no reviewer can ever take (nobody is licensed in Wyoming).
    stuck = [f"stuck-{i:02d}" for i in range(STUCK_FOR_GOOD)]
    for case_id in stuck:
        now += timedelta(minutes=1)
        await handlers.assign_case(store, POLICY, now, records_complete(case_id, "US-WY"), meta())
    # The reviewer's capacity fills up...
    held = [f"held-{i}" for i in range(CAPACITY)]
    for case_id in held:
        now += timedelta(minutes=1)
        await handlers.assign_case(store, POLICY, now, records_complete(case_id, "US-CA"), meta())
    # ... so newer cases wait for capacity only.
    waiting = [f"waiting-{i}" for i in range(CAPACITY)]
    for case_id in waiting:
        now += timedelta(minutes=1)
        await handlers.assign_case(store, POLICY, now, records_complete(case_id, "US-CA"), meta())
    assert set((await states(store, stuck + waiting)).values()) == {"unassignable"}
    assert set((await states(store, held)).values()) == {"offered"}

    # Every held case is reported: the reviewer is back at 0/6.
    reports_began = now
    for a in await store.find({"case_id": {"$in": held}}):
        now += timedelta(minutes=1)
        report = ReportSubmitted(
            case_id=a.case_id,
            tenant_id=a.tenant_id,
            report_id=f"r-{a.case_id}",
            reviewer_id="rev-a",
            assignment_id=a.assignment_id,
            concordance="confirmed",
        )
        await handlers.close_assignment(store, POLICY, now, report, meta())
    # The timer loop goes on re-offering, a bounded batch per pass.
    for _ in range(3):
        now += timedelta(seconds=5)
        await handlers.fire_timers(store, POLICY, now)

    assert await states(store, waiting) == dict.fromkeys(waiting, "offered")
    stuck_now = await store.find({"case_id": {"$in": stuck}})
    assert {a.state for a in stuck_now} == {"unassignable"}
    # None skipped: every case stuck for good was tried again, and moved back.
    assert all(a.tried_at and a.tried_at > reports_began for a in stuck_now)
    assert await store.active_load() == {"rev-a": CAPACITY}


@pytest_asyncio.fixture(loop_scope="session")
async def inproc(infra: dict[str, Any], tmp_path: Path) -> AsyncIterator[InProcessAssignment]:
    svc = InProcessAssignment(infra, tmp_path, START)
    try:
        await svc.load_roster()
        yield svc
    finally:
        await svc.close()


async def test_a_roster_change_re_offers_waiting_cases_past_those_stuck_for_good(
    inproc: InProcessAssignment,
) -> None:
    """More than a pass's worth of cases stuck for good, then one that waits for a
    reviewer of its subspecialty: adding that reviewer (roster API) offers it at once."""
    svc, clock = inproc, inproc.clock
    for i in range(STUCK_FOR_GOOD):
        clock.advance(timedelta(minutes=1))
        event = records_complete(f"stuck-{i:02d}", "US-WY")
        await handlers.assign_case(svc.store, svc.policy, clock.now(), event, meta())
    clock.advance(timedelta(minutes=1))
    event = records_complete("needs-hepatology", "US-CA", "hepatology")
    await handlers.assign_case(svc.store, svc.policy, clock.now(), event, meta())
    assert await states(svc.store, ["needs-hepatology"]) == {"needs-hepatology": "unassignable"}

    clock.advance(timedelta(minutes=1))
    hepatologist = {
        "reviewer_id": "rev-hep-1",
        "name": "Dr. Liver",
        "subspecialties": ["hepatology"],
        "licensed_jurisdictions": ["US-CA"],
    }
    r = await svc.http.put("/v1/reviewers/rev-hep-1", json=hepatologist, headers=OPS)
    assert r.status_code == 200

    (offered,) = await svc.store.find({"case_id": "needs-hepatology"})
    assert (offered.state, offered.reviewer_id) == ("offered", "rev-hep-1"), offered.excluded
    assert len(await svc.emitted("case.assigned", "needs-hepatology")) == 1


async def test_the_roster_api_refuses_an_unknown_subspecialty_code(
    inproc: InProcessAssignment,
) -> None:
    body = {
        "reviewer_id": "rev-x",
        "name": "Dr. X",
        "subspecialties": ["neuro-radiology"],  # not a code of shared.vocabulary
        "licensed_jurisdictions": ["US-CA"],
    }
    r = await inproc.http.put("/v1/reviewers/rev-x", json=body, headers=OPS)
    assert r.status_code == 422
    assert await inproc.store.reviewer("rev-x") is None


@pytest.mark.parametrize("freed_by", ["decline", "expiry"])
async def test_capacity_freed_by_a_decline_or_an_expired_offer_goes_to_a_waiting_case(
    db: AsyncDatabase[Doc], freed_by: str
) -> None:
    store = AssignmentStore(db["reviewers"], db["assignments"])
    await store.create_indexes()
    await store.upsert_reviewers([neuroradiologist("rev-a", capacity=1)])
    now = START
    await handlers.assign_case(store, POLICY, now, records_complete("first", "US-CA"), meta())
    now += timedelta(minutes=1)
    await handlers.assign_case(store, POLICY, now, records_complete("second", "US-CA"), meta())
    assert await states(store, ["first", "second"]) == {
        "first": "offered",
        "second": "unassignable",
    }
    (first,) = await store.find({"case_id": "first"})

    if freed_by == "decline":
        now += timedelta(minutes=1)
        await handlers.respond(store, POLICY, now, first.assignment_id, "rev-a", "decline")
    else:
        assert first.accept_by is not None
        await handlers.fire_timers(store, POLICY, first.accept_by + timedelta(seconds=1))

    # The only reviewer turned the first case down (or let it lapse): it waits now,
    # and the capacity this freed went to the case that waited for it.
    assert await states(store, ["first", "second"]) == {
        "first": "unassignable",
        "second": "offered",
    }


async def test_a_redelivered_event_costs_no_read_of_the_reviewers_load(
    db: AsyncDatabase[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load read (every active assignment) grows with the work in flight; a soak
    that redelivers every event twice paid it on each copy, fell behind on
    report.submitted, kept reported work counted as active, and the read grew:
    a redelivery is skipped before it, and a report with nothing waiting
    re-offers nothing."""
    store = AssignmentStore(db["reviewers"], db["assignments"])
    await store.create_indexes()
    await store.upsert_reviewers([neuroradiologist("rev-a")])
    reads = 0
    real_load = store.active_load

    async def counted() -> dict[str, int]:
        nonlocal reads
        reads += 1
        return await real_load()

    monkeypatch.setattr(store, "active_load", counted)
    complete, complete_meta = records_complete("case-r", "US-CA"), meta()
    await handlers.assign_case(store, POLICY, START, complete, complete_meta)
    assert reads == 1  # a slot was opened: the load was needed
    await handlers.assign_case(store, POLICY, START, complete, complete_meta)  # redelivered
    assert reads == 1
    (a,) = await store.find({"case_id": "case-r"})
    report = ReportSubmitted(
        case_id="case-r",
        tenant_id="demo-health",
        report_id="r-case-r",
        reviewer_id="rev-a",
        assignment_id=a.assignment_id,
        concordance="confirmed",
    )
    report_meta = meta()
    await handlers.close_assignment(store, POLICY, START, report, report_meta)
    assert (await states(store, ["case-r"])) == {"case-r": "reported"}
    assert reads == 1  # nothing waits: no re-offer pass
    # Something waits now (nobody is licensed in Wyoming): a report that frees
    # capacity re-offers; its redelivery does not.
    await handlers.assign_case(store, POLICY, START, records_complete("case-w", "US-WY"), meta())
    await handlers.assign_case(store, POLICY, START, records_complete("case-s", "US-CA"), meta())
    assert reads == 3
    (s,) = await store.find({"case_id": "case-s"})
    report = report.model_copy(
        update={"case_id": "case-s", "report_id": "r-s", "assignment_id": s.assignment_id}
    )
    second = meta()
    await handlers.close_assignment(store, POLICY, START, report, second)
    assert reads == 4
    await handlers.close_assignment(store, POLICY, START, report, second)  # redelivered
    assert reads == 4

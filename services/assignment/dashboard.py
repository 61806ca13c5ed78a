"""The SLA dashboard's numbers, free of I/O: what is waiting on whom, what is
about to breach, what breached, reviewer load and turnaround by subspecialty.

The same `Dashboard` feeds the JSON API, the web page and the Prometheus
metrics (which carry only aggregate labels: stage, tier, subspecialty,
reviewer id, never a case id or anything about the patient).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import BaseModel

from services.assignment import domain
from services.assignment.domain import Assignment, Reviewer, SlaPolicy


class CaseRow(BaseModel):
    case_id: str
    assignment_id: str
    subspecialty: str
    tier: str
    urgency: str
    stage: str
    reviewer_id: str | None
    status: str  # on_track / at_risk / breached / paused / unassignable
    due_at: datetime | None
    remaining_business_hours: float
    fraction_elapsed: float
    paused_for: list[str]
    reason: str


class StageCount(BaseModel):
    stage: str
    tier: str
    count: int


class ReviewerLoad(BaseModel):
    reviewer_id: str
    name: str
    load: int
    capacity: int


class Turnaround(BaseModel):
    subspecialty: str
    count: int
    median_hours: float
    p90_hours: float


class ReportedSummary(BaseModel):
    """The reported assignments of the turnaround window, as counted by the database."""

    by_tier: dict[str, int] = {}
    turnaround: list[Turnaround] = []


class Dashboard(BaseModel):
    generated_at: datetime
    cases: list[CaseRow]
    by_stage_and_tier: list[StageCount]
    at_risk: int
    breached: int
    paused: int
    reviewers: list[ReviewerLoad]
    turnaround: list[Turnaround]


def case_row(a: Assignment, policy: SlaPolicy, now: datetime) -> CaseRow:
    cal = policy.calendar_for(a.clock)
    used = domain.elapsed(a.clock, cal, now)
    budget = a.clock.budget_seconds
    return CaseRow(
        case_id=a.case_id,
        assignment_id=a.assignment_id,
        subspecialty=a.subspecialty,
        tier=a.routing.service_tier.value,
        urgency=a.routing.urgency.value,
        stage=a.state,
        reviewer_id=a.reviewer_id,
        # No reviewer: never "on track" (the clock of an unassignable case waits too).
        status="unassignable" if a.state == "unassignable" else domain.sla_status(a, policy, now),
        due_at=a.due_at,
        remaining_business_hours=round((budget - used) / 3600, 2),
        fraction_elapsed=round(used / budget, 3) if budget else 1.0,
        paused_for=a.clock.paused_for,
        reason=a.reason,
    )


def summarize(
    open_: list[Assignment],
    reported: ReportedSummary,
    roster: list[Reviewer],
    load: dict[str, int],
    policy: SlaPolicy,
    now: datetime,
) -> Dashboard:
    """The dashboard from the open assignments (the work in flight) and the
    database's summary of the reported ones: nothing here grows with the number
    of cases ever reviewed."""
    rows = sorted(
        (case_row(a, policy, now) for a in open_),
        key=lambda r: (
            r.status != "breached",
            r.status != "unassignable",
            r.status != "at_risk",
            r.remaining_business_hours,
        ),
    )
    stages = Counter((a.state, a.routing.service_tier.value) for a in open_)
    stages.update({("reported", tier): n for tier, n in reported.by_tier.items()})
    statuses = Counter(r.status for r in rows)
    return Dashboard(
        generated_at=now,
        cases=rows,
        by_stage_and_tier=[
            StageCount(stage=s, tier=t, count=n) for (s, t), n in sorted(stages.items())
        ],
        at_risk=statuses["at_risk"],
        breached=statuses["breached"],
        paused=statuses["paused"],
        reviewers=[
            ReviewerLoad(
                reviewer_id=r.reviewer_id,
                name=r.name,
                load=load.get(r.reviewer_id, 0),
                capacity=r.capacity,
            )
            for r in roster
        ],
        turnaround=reported.turnaround,
    )

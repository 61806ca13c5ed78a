"""The SLA dashboard's numbers, free of I/O: what is waiting on whom, what is
about to breach, what breached, reviewer load and turnaround by subspecialty.

The same `Dashboard` feeds the JSON API, the web page and the Prometheus
metrics (which carry only aggregate labels: stage, tier, subspecialty,
reviewer id, never a case id or anything about the patient).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
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
    status: str  # on_track / at_risk / breached / paused
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


class Dashboard(BaseModel):
    generated_at: datetime
    cases: list[CaseRow]
    by_stage_and_tier: list[StageCount]
    at_risk: int
    breached: int
    paused: int
    reviewers: list[ReviewerLoad]
    turnaround: list[Turnaround]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


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
        status=domain.sla_status(a, policy, now),
        due_at=a.due_at,
        remaining_business_hours=round((budget - used) / 3600, 2),
        fraction_elapsed=round(used / budget, 3) if budget else 1.0,
        paused_for=a.clock.paused_for,
        reason=a.reason,
    )


def turnaround(reported: list[Assignment]) -> list[Turnaround]:
    hours: dict[str, list[float]] = defaultdict(list)
    for a in reported:
        if a.turnaround_hours is not None:
            hours[a.subspecialty].append(a.turnaround_hours)
    return [
        Turnaround(
            subspecialty=s,
            count=len(v),
            median_hours=round(percentile(v, 0.5), 2),
            p90_hours=round(percentile(v, 0.9), 2),
        )
        for s, v in sorted(hours.items())
    ]


def summarize(
    assignments: list[Assignment],
    roster: list[Reviewer],
    load: dict[str, int],
    policy: SlaPolicy,
    now: datetime,
) -> Dashboard:
    open_ = [a for a in assignments if a.state != "reported"]
    rows = sorted(
        (case_row(a, policy, now) for a in open_),
        key=lambda r: (r.status != "breached", r.status != "at_risk", r.remaining_business_hours),
    )
    stages = Counter((a.state, a.routing.service_tier.value) for a in assignments)
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
        turnaround=turnaround([a for a in assignments if a.state == "reported"]),
    )

"""The operations view, free of I/O: every open case whatever its stage, what it
waits for, and what needs a person first (docs/operations.md).

assignment owns this read model (collection `ops_cases`, one document per case)
because it already follows the review and knows the roster; it is fed only by
events already on Kafka: intake's `case.status` / `case.accepted` /
`case.rejected`, records_fetch's `records.*`, assignment's own `case.*` and
`sla.*`, reporting's `report.*` and notify's `notification.delivered`. `apply`
folds one event into an `OpsCase`; events of different topics may arrive in any
order, so a stage only moves forward (`STAGE_RANK`) and each fact is kept in its
own field. `ops_state` turns a case (and its live assignments) into the one
state a person reads, and `priority` sorts what needs a person first.

No PHI here: ids, routing (subspecialties, tier, urgency, jurisdiction), the
kinds of missing records, reasons written by the services, times.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from shared.events import (
    CaseAccepted,
    CaseAssigned,
    CaseReassigned,
    CaseRejected,
    CaseRerouted,
    CaseStatusChanged,
    CaseUnassignable,
    NotificationDelivered,
    RecordsComplete,
    RecordsIncomplete,
    RecordsProgress,
    RecordsRequested,
    ReportReady,
    ReportSubmitted,
    SlaBreached,
    SlaWarning,
)

# The stage of a case, as operations read it; a later stage never goes back,
# except that records.complete clears records_incomplete (rank 3 -> 4).
STAGE_RANK: dict[str, int] = {
    "received": 0,
    "held_for_review": 1,
    "awaiting_authorization": 1,
    "records": 2,
    "records_incomplete": 3,
    "assignment": 4,
    "report_submitted": 5,
    "report_ready": 6,
    "delivered": 7,
    "rejected": 8,
    "declined": 8,
}
CLOSED_STAGES = ("delivered", "rejected", "declined")
# intake's stage names (services/intake/domain.py STAGES) as this view names them.
INTAKE_STAGES = {
    "received": "received",
    "held_for_review": "held_for_review",
    "awaiting_authorization": "awaiting_authorization",
    "accepted": "records",
    "records_complete": "assignment",
    "assigned": "assignment",
    "report_submitted": "report_submitted",
    "report_ready": "report_ready",
    "delivered": "delivered",
    "declined": "declined",
    "rejected": "rejected",
}
TIMELINE_MAX = 200
APPLIED_MAX = 400

OpsState = Literal[
    "breached",
    "delivery_failed",
    "held_for_review",
    "unassignable",
    "records_incomplete",
    "awaiting_authorization",
    "at_risk",
    "stalled",
    "awaiting_acceptance",
    "in_review",
    "in_progress",
    "done",
]
# What needs a person first: the order of the list (docs/operations.md).
PRIORITY: dict[str, int] = {s: i for i, s in enumerate(get_args(OpsState))}
# Colour class of each state on the page: only work that moves on its own is green.
SEVERITY: dict[str, str] = {
    "breached": "red",
    "delivery_failed": "red",
    "held_for_review": "red",
    "unassignable": "red",
    "records_incomplete": "amber",
    "awaiting_authorization": "amber",
    "at_risk": "amber",
    "stalled": "amber",
    "awaiting_acceptance": "amber",
    "in_review": "green",
    "in_progress": "green",
    "done": "grey",
}


class TimelineEntry(BaseModel):
    at: datetime
    service: str
    event: str
    detail: str = ""


class Slot(BaseModel):
    """One needed subspecialty of the case, as assignment's events told it."""

    state: str = "waiting"  # offered / unassignable / reported (accepted: live assignments)
    reviewer_id: str = ""
    assignment_id: str = ""
    due_at: datetime | None = None
    reason: str = ""


class OpsCase(BaseModel):
    case_id: str
    tenant_id: str
    external_id: str = ""
    stage: str = "received"
    subspecialties: list[str] = []
    urgency: str = ""
    tier: str = ""
    jurisdiction: str = ""
    waiting_for: list[str] = []
    missing: list[str] = []
    records_gave_up: bool = False
    slots: dict[str, Slot] = {}
    warned_fraction: float = 0.0
    breached_at: datetime | None = None
    submitted_at: datetime | None = None
    records_complete_at: datetime | None = None
    report_at: datetime | None = None
    delivered_at: datetime | None = None
    delivery_failed: list[str] = Field(default=[], description="dead-lettered delivery ids")
    report_id: str = ""
    report_links: dict[str, str] = {}
    trace_id: str = ""
    updated_at: datetime | None = None
    timeline: list[TimelineEntry] = []

    @property
    def open(self) -> bool:
        return self.stage not in CLOSED_STAGES


def _advance(case: OpsCase, stage: str) -> None:
    if STAGE_RANK.get(stage, 0) >= STAGE_RANK.get(case.stage, 0):
        case.stage = stage


def _routing(case: OpsCase, subs: Iterable[str], urgency: str, tier: str, where: str) -> None:
    case.subspecialties = list(subs) or case.subspecialties
    case.urgency, case.tier = urgency or case.urgency, tier or case.tier
    case.jurisdiction = where or case.jurisdiction


def _slot(case: OpsCase, subspecialty: str) -> Slot:
    return case.slots.setdefault(subspecialty, Slot())


def apply(case: OpsCase | None, event: Any, at: datetime, trace_id: str = "") -> OpsCase:
    """`case` with `event` folded in (a new case if None); `at` is when it was seen."""
    c = (
        OpsCase(case_id=event.case_id, tenant_id=event.tenant_id)
        if case is None
        else case.model_copy(deep=True)
    )
    c.trace_id = c.trace_id or trace_id
    c.updated_at = at
    service, detail = _fold(c, event, at)
    c.timeline = [
        *c.timeline,
        TimelineEntry(at=at, service=service, event=event.topic, detail=detail),
    ]
    c.timeline = c.timeline[-TIMELINE_MAX:]
    return c


def _fold(c: OpsCase, e: Any, at: datetime) -> tuple[str, str]:
    """Fold one event's facts into `c`; (the emitting service, a line for the timeline)."""
    if isinstance(e, CaseStatusChanged):
        _advance(c, INTAKE_STAGES.get(e.stage, e.stage))
        if c.stage in ("held_for_review", "awaiting_authorization"):
            c.waiting_for = list(e.waiting_for)
        elif STAGE_RANK.get(c.stage, 0) > 1:
            c.waiting_for = []
        _routing(c, e.subspecialties, e.urgency.value, e.service_tier.value, "")
        c.submitted_at = c.submitted_at or e.changed_at
        return "intake", f"{e.previous_stage or '…'} → {e.stage}"
    if isinstance(e, CaseAccepted):
        c.external_id = e.external_id
        r = e.routing
        _routing(c, r.subspecialties, r.urgency.value, r.service_tier.value, r.jurisdiction)
        _advance(c, "records")
        c.waiting_for = []
        c.submitted_at = c.submitted_at or at
        return "intake", f"accepted for {', '.join(r.subspecialties)}"
    if isinstance(e, CaseRejected):
        c.external_id = e.external_id
        _advance(c, "rejected")
        return "intake", f"rejected: {', '.join(err.msg for err in e.errors[:3])}"
    if isinstance(e, RecordsRequested):
        _advance(c, "records")
        return (
            "records_fetch",
            f"requested {', '.join(k.value for k in e.kinds)} from {e.provider_id}",
        )
    if isinstance(e, RecordsProgress):
        _advance(c, "records")
        why = f" ({e.reason})" if e.reason else ""
        return "records_fetch", f"{e.kind.value} from {e.provider_id}: {e.state}{why}"
    if isinstance(e, RecordsIncomplete):
        c.missing = [f"{m.kind.value}{': ' + m.detail if m.detail else ''}" for m in e.missing]
        c.records_gave_up = e.gave_up
        if c.stage in ("records", "received") or STAGE_RANK.get(c.stage, 0) <= 3:
            _advance(c, "records_incomplete")
        tail = "gave up" if e.gave_up else f"attempt {e.attempt}"
        return "records_fetch", f"missing {', '.join(c.missing)} ({tail})"
    if isinstance(e, RecordsComplete):
        r = e.routing
        # records.complete carries the routing of case.accepted; a re-check is newer.
        rerouted = any(t.event == CaseRerouted.topic for t in c.timeline)
        subs = [] if rerouted else r.subspecialties
        _routing(c, subs, r.urgency.value, r.service_tier.value, r.jurisdiction)
        c.missing, c.records_gave_up = [], False
        c.records_complete_at = e.completed_at
        _advance(c, "assignment")
        return "records_fetch", f"records complete ({len(e.manifest)} kinds)"
    return _fold_review(c, e, at)


def _fold_review(c: OpsCase, e: Any, at: datetime) -> tuple[str, str]:
    if isinstance(e, CaseAssigned):
        _advance(c, "assignment")
        s = _slot(c, e.subspecialty)
        s.state, s.reviewer_id, s.assignment_id = "offered", e.reviewer_id, e.assignment_id
        s.due_at, s.reason = e.due_at, ""
        return "assignment", f"{e.subspecialty} offered to {e.reviewer_id}"
    if isinstance(e, CaseReassigned):
        for s in c.slots.values():
            if s.assignment_id == e.assignment_id:
                s.reviewer_id = e.to_reviewer_id
                if e.withdrawn:
                    s.state = "withdrawn"
        if e.withdrawn:
            return "assignment", f"offer to {e.from_reviewer_id} withdrawn: {e.reason}"
        return "assignment", f"reassigned from {e.from_reviewer_id}: {e.reason}"
    if isinstance(e, CaseUnassignable):
        _advance(c, "assignment")
        s = _slot(c, e.subspecialty)
        s.state, s.reviewer_id, s.reason = "unassignable", "", e.reason
        return "assignment", f"{e.subspecialty} unassignable: {e.reason}"
    if isinstance(e, CaseRerouted):
        r = e.routing
        _routing(c, r.subspecialties, r.urgency.value, r.service_tier.value, r.jurisdiction)
        changes = [f"+{k}" for k in e.added] + [f"-{k}" for k in e.removed]
        return "intake", f"rerouted with the images: {', '.join(changes)}"
    if isinstance(e, SlaWarning):
        c.warned_fraction = max(c.warned_fraction, e.fraction_elapsed)
        return "assignment", f"SLA {round(e.fraction_elapsed * 100)}% used"
    if isinstance(e, SlaBreached):
        c.breached_at = c.breached_at or at
        return "assignment", f"SLA breached (escalation level {e.escalation_level})"
    if isinstance(e, ReportSubmitted):
        _advance(c, "report_submitted")
        for s in c.slots.values():
            if s.assignment_id == e.assignment_id or s.reviewer_id == e.reviewer_id:
                s.state = "reported"
        return "reporting", f"report {e.report_id} submitted by {e.reviewer_id}"
    if isinstance(e, ReportReady):
        _advance(c, "report_ready")
        c.report_id, c.report_at = e.report_id, e.signed_at
        c.report_links = {k: v for k, v in e.links.model_dump().items() if v}
        return "reporting", f"report {e.report_id} signed ({e.concordance.value})"
    if isinstance(e, NotificationDelivered):
        if e.status == "dead_letter":
            if e.delivery_id not in c.delivery_failed:
                c.delivery_failed = [*c.delivery_failed, e.delivery_id][-20:]
        else:
            c.delivery_failed = [d for d in c.delivery_failed if d != e.delivery_id]
            if e.event_type == "report.ready":
                c.delivered_at = c.delivered_at or at
                if not c.delivery_failed:
                    _advance(c, "delivered")
        return "notify", f"{e.event_type} via {e.channel}: {e.status}"
    raise TypeError(f"the operations view does not follow {type(e).__name__}")


# ---------------------------------------------------------------- the state a person reads


class LiveSlot(BaseModel):
    """An open assignment of the case as assignment holds it now."""

    subspecialty: str
    state: str  # offered / accepted / unassignable
    sla: str  # on_track / at_risk / breached / paused
    reviewer_id: str | None
    due_at: datetime | None
    reason: str


class OpsRow(BaseModel):
    case_id: str
    tenant_id: str
    external_id: str
    stage: str
    state: str
    severity: str
    reason: str
    subspecialties: list[str]
    urgency: str
    tier: str
    jurisdiction: str
    reviewer_ids: list[str]
    due_at: datetime | None
    due_timezone: str
    missing: list[str]
    updated_at: datetime | None
    idle_hours: float


def ops_state(
    c: OpsCase, live: list[LiveSlot], now: datetime, stall_after: timedelta
) -> tuple[str, str]:
    """The one state of a case and why, worst first: nothing that waits on a person
    or has stopped moving reads as green."""
    if c.stage in CLOSED_STAGES and not c.delivery_failed:
        return "done", c.stage
    slas = {s.sla for s in live}
    if c.breached_at is not None or "breached" in slas:
        return "breached", "review deadline passed"
    if c.delivery_failed:
        return "delivery_failed", f"{len(c.delivery_failed)} delivery dead-lettered"
    if c.stage == "held_for_review":
        return "held_for_review", "; ".join(c.waiting_for) or "held for human review"
    unassignable = [s.reason for s in live if s.state == "unassignable"]
    if not live:  # the assignments are not in yet: what assignment's events said
        unassignable = [s.reason for s in c.slots.values() if s.state == "unassignable"]
    if unassignable:
        return "unassignable", "; ".join(unassignable)
    if c.stage == "records_incomplete" or c.missing:
        tail = " (retrieval gave up)" if c.records_gave_up else ""
        return "records_incomplete", f"missing {', '.join(c.missing) or 'records'}{tail}"
    if c.stage == "awaiting_authorization":
        return "awaiting_authorization", "; ".join(c.waiting_for) or "release authorization"
    if "at_risk" in slas:
        return "at_risk", "most of the review time is used"
    # The live assignments, or what assignment's events said if none is live yet.
    states = [s.state for s in live] or [s.state for s in c.slots.values()]
    if "offered" in states:
        return "awaiting_acceptance", "offered; the reviewer has not accepted yet"
    if live and all(s.state == "accepted" for s in live):
        paused = "; clock paused" if "paused" in slas else ""
        return "in_review", f"accepted, review under way{paused}"
    idle = now - c.updated_at if c.updated_at else timedelta(0)
    if idle >= stall_after:
        return "stalled", f"no movement for {idle.total_seconds() / 3600:.1f} h at {c.stage}"
    return "in_progress", c.stage.replace("_", " ")


def row(
    c: OpsCase, live: list[LiveSlot], now: datetime, stall_after: timedelta, timezone: str
) -> OpsRow:
    state, reason = ops_state(c, live, now, stall_after)
    dues = [s.due_at for s in live if s.due_at] or [s.due_at for s in c.slots.values() if s.due_at]
    reviewers = sorted({s.reviewer_id for s in live if s.reviewer_id})
    idle = (now - c.updated_at).total_seconds() / 3600 if c.updated_at else 0.0
    return OpsRow(
        case_id=c.case_id,
        tenant_id=c.tenant_id,
        external_id=c.external_id,
        stage=c.stage,
        state=state,
        severity=SEVERITY[state],
        reason=reason,
        subspecialties=c.subspecialties,
        urgency=c.urgency,
        tier=c.tier,
        jurisdiction=c.jurisdiction,
        reviewer_ids=reviewers,
        due_at=min(dues) if dues else None,
        due_timezone=timezone,
        missing=c.missing,
        updated_at=c.updated_at,
        idle_hours=round(idle, 2),
    )


def priority(r: OpsRow) -> tuple[int, int, float, float]:
    """What needs a person first: the worst state, then urgency, then the nearest
    deadline (none last), then the longest idle."""
    urgency = {"urgent": 0, "priority": 1}.get(r.urgency, 2)
    due = r.due_at.timestamp() if r.due_at else float("inf")
    return PRIORITY[r.state], urgency, due, -r.idle_hours


class Filters(BaseModel):
    tenant: str = ""
    stage: str = ""
    state: str = ""
    specialty: str = ""
    urgency: str = ""
    q: str = Field(default="", description="a case id or external id (prefix)")


def matches(r: OpsRow, f: Filters) -> bool:
    return (
        (not f.tenant or r.tenant_id == f.tenant)
        and (not f.stage or r.stage == f.stage)
        and (not f.state or r.state == f.state)
        and (not f.specialty or f.specialty in r.subspecialties)
        and (not f.urgency or r.urgency == f.urgency)
        and (not f.q or r.case_id.startswith(f.q) or r.external_id.startswith(f.q))
    )


# ---------------------------------------------------------------- capacity


class Capacity(BaseModel):
    subspecialty: str
    jurisdiction: str
    demand: int
    eligible_reviewers: int
    free_capacity: int
    alert: bool


def capacity(rows: list[OpsRow], roster: list[Any], load: dict[str, int]) -> list[Capacity]:
    """Open demand per (subspecialty, jurisdiction) against the active reviewers of
    that subspecialty licensed there and their free places. Demand: open cases not
    yet reported. Alert: demand and no eligible reviewer at all."""
    demand: Counter[tuple[str, str]] = Counter()
    for r in rows:
        # From accepted (routing known, jurisdiction included) until the report is in.
        rank = STAGE_RANK.get(r.stage, 0)
        if r.jurisdiction and STAGE_RANK["records"] <= rank < STAGE_RANK["report_submitted"]:
            for s in r.subspecialties:
                demand[(s, r.jurisdiction)] += 1
    out = []
    for (sub, where), n in sorted(demand.items()):
        eligible = [
            v
            for v in roster
            if v.active and sub in v.subspecialties and where in v.licensed_jurisdictions
        ]
        free = sum(max(v.capacity - load.get(v.reviewer_id, 0), 0) for v in eligible)
        out.append(
            Capacity(
                subspecialty=sub,
                jurisdiction=where,
                demand=n,
                eligible_reviewers=len(eligible),
                free_capacity=free,
                alert=not eligible,
            )
        )
    return out


# ---------------------------------------------------------------- trends


class TrendPoint(BaseModel):
    day: str
    submitted: int = 0
    delivered: int = 0
    breaches: int = 0


class TurnaroundPoint(BaseModel):
    day: str
    subspecialty: str
    tier: str
    measure: Literal["records_to_report", "submitted_to_delivered"]
    count: int
    median_hours: float


class Trends(BaseModel):
    days: list[TrendPoint]
    turnaround: list[TurnaroundPoint]


def _day(t: datetime) -> str:
    return t.date().isoformat()


def trends(cases: Iterable[OpsCase], now: datetime, days: int) -> Trends:
    """Volumes, breaches and median turnaround per day (UTC) over the last `days`."""
    since = now - timedelta(days=days)
    per_day: dict[str, TrendPoint] = {
        _day(since + timedelta(days=i + 1)): TrendPoint(day=_day(since + timedelta(days=i + 1)))
        for i in range(days)
    }
    samples: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for c in cases:
        if c.submitted_at and c.submitted_at >= since and _day(c.submitted_at) in per_day:
            per_day[_day(c.submitted_at)].submitted += 1
        if c.breached_at and _day(c.breached_at) in per_day:
            per_day[_day(c.breached_at)].breaches += 1
        sub = c.subspecialties[0] if c.subspecialties else "?"
        if c.delivered_at and _day(c.delivered_at) in per_day:
            per_day[_day(c.delivered_at)].delivered += 1
            if c.submitted_at:
                hours = (c.delivered_at - c.submitted_at).total_seconds() / 3600
                samples[(_day(c.delivered_at), sub, c.tier, "submitted_to_delivered")].append(hours)
        if c.report_at and c.records_complete_at and _day(c.report_at) in per_day:
            hours = (c.report_at - c.records_complete_at).total_seconds() / 3600
            samples[(_day(c.report_at), sub, c.tier, "records_to_report")].append(hours)
    return Trends(
        days=list(per_day.values()),
        turnaround=[
            TurnaroundPoint(
                day=d,
                subspecialty=s,
                tier=t,
                measure=m,
                count=len(v),
                median_hours=round(statistics.median(v), 2),
            )
            for (d, s, t, m), v in sorted(samples.items())
        ],
    )

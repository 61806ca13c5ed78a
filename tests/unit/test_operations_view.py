"""The operations view's pure rules (services/assignment/operations.py): events
folded in any order, the state a person reads (never green when stuck), the
order of what needs a person first, filters, capacity alerts and trends. The
same rules on the real stack: tests/security/test_ops_view_browser.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.assignment import operations as ops
from services.assignment.domain import Reviewer
from shared.events import (
    CaseAccepted,
    CaseAssigned,
    CaseStatusChanged,
    CaseUnassignable,
    ManifestItem,
    NotificationDelivered,
    RecordKind,
    RecordsComplete,
    RecordsIncomplete,
    RoutingContext,
    SlaBreached,
)

T0 = datetime(2026, 11, 16, 14, tzinfo=UTC)
ROUTING = RoutingContext(subspecialties=["cardiology"], jurisdiction="US-NY")
STALL = timedelta(hours=8)


def fold(*events: object, at: datetime = T0) -> ops.OpsCase:
    case = None
    for i, e in enumerate(events):
        case = ops.apply(case, e, at + timedelta(minutes=i))
    assert case is not None
    return case


def accepted(case_id: str = "c1") -> CaseAccepted:
    return CaseAccepted(
        case_id=case_id, tenant_id="t", external_id=f"ext-{case_id}", routing=ROUTING, records=[]
    )


def complete(case_id: str = "c1") -> RecordsComplete:
    return RecordsComplete(
        case_id=case_id,
        tenant_id="t",
        routing=ROUTING,
        manifest=[ManifestItem(kind=RecordKind.NOTES, present=True)],
        completed_at=T0,
    )


def state(c: ops.OpsCase, now: datetime = T0 + timedelta(hours=1)) -> str:
    return ops.ops_state(c, [], now, STALL)[0]


def test_a_stage_never_goes_back_whatever_the_order_of_topics() -> None:
    late = fold(complete(), accepted())  # records.complete seen before case.accepted
    assert late.stage == "assignment" and late.external_id == "ext-c1"


def test_held_incomplete_unassignable_and_failed_delivery_are_never_green() -> None:
    held = CaseStatusChanged(
        case_id="c1",
        tenant_id="t",
        stage="held_for_review",
        waiting_for=["controlled substance"],
        changed_at=T0,
    )
    assert state(fold(held)) == "held_for_review"
    assert ops.SEVERITY[state(fold(held))] == "red"
    missing = RecordsIncomplete(
        case_id="c1",
        tenant_id="t",
        missing=[ManifestItem(kind=RecordKind.IMAGING, present=False, detail="no study")],
    )
    c = fold(accepted(), missing)
    assert (state(c), c.missing) == ("records_incomplete", ["imaging: no study"])
    assert state(fold(accepted(), missing, complete())) != "records_incomplete"
    stuck = CaseUnassignable(
        case_id="c1", tenant_id="t", subspecialty="cardiology", reason="no eligible cardiology"
    )
    u = fold(accepted(), complete(), stuck)
    assert ops.ops_state(u, [], T0, STALL) == ("unassignable", "no eligible cardiology")
    dead = NotificationDelivered(
        case_id="c1",
        tenant_id="t",
        delivery_id="d1",
        event_type="report.ready",
        channel="webhook",
        status="dead_letter",
    )
    assert state(fold(accepted(), dead)) == "delivery_failed"
    assert state(fold(accepted())) == "in_progress"
    assert state(fold(accepted()), T0 + timedelta(hours=9)) == "stalled"


def test_what_needs_a_person_comes_first() -> None:
    breach = SlaBreached(case_id="b", tenant_id="t", assignment_id="a", due_at=T0)
    offer = CaseAssigned(
        case_id="o",
        tenant_id="t",
        assignment_id="a",
        reviewer_id="r",
        subspecialty="cardiology",
        due_at=T0,
        reason="x",
    )
    cases = [fold(accepted("p")), fold(accepted("o"), offer), fold(accepted("b"), breach)]
    rows = [ops.row(c, [], T0, STALL, "UTC") for c in cases]
    assert [r.case_id for r in sorted(rows, key=ops.priority)] == ["b", "o", "p"]
    assert [r.case_id for r in rows if ops.matches(r, ops.Filters(q="ext-o"))] == ["o"]
    assert [r.case_id for r in rows if ops.matches(r, ops.Filters(state="breached"))] == ["b"]


def test_demand_without_an_eligible_reviewer_is_an_alert() -> None:
    rows = [ops.row(fold(accepted()), [], T0, STALL, "UTC")]
    nobody = Reviewer(
        reviewer_id="n",
        name="N",
        subspecialties=["neuroradiology"],
        licensed_jurisdictions=["US-NY"],
    )
    heart = Reviewer(
        reviewer_id="h",
        name="H",
        subspecialties=["cardiology"],
        licensed_jurisdictions=["US-NY"],
        capacity=3,
    )
    [alert] = ops.capacity(rows, [nobody], {})
    assert (alert.demand, alert.eligible_reviewers, alert.alert) == (1, 0, True)
    [fine] = ops.capacity(rows, [nobody, heart], {"h": 1})
    assert (fine.eligible_reviewers, fine.free_capacity, fine.alert) == (1, 2, False)


def test_trends_count_volumes_breaches_and_turnaround() -> None:
    c = fold(accepted(), complete())
    c = c.model_copy(
        update={
            "submitted_at": T0,
            "report_at": T0 + timedelta(hours=5),
            "delivered_at": T0 + timedelta(hours=6),
            "breached_at": T0 + timedelta(hours=2),
            "tier": "specialist_opinion",
        }
    )
    t = ops.trends([c], T0 + timedelta(days=1), 3)
    day = next(d for d in t.days if d.day == "2026-11-16")
    assert (day.submitted, day.delivered, day.breaches) == (1, 1, 1)
    measures = {p.measure: p.median_hours for p in t.turnaround}
    assert measures == {"records_to_report": 5.0, "submitted_to_delivered": 6.0}

"""Assignments over time: offer, accept/decline, acceptance window, warnings,
breach and the escalation ladder, each timer firing once; and the dashboard."""

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.assignment import domain
from services.assignment.calendar import CalendarSpec
from services.assignment.dashboard import ReportedSummary, Turnaround, summarize
from services.assignment.domain import EscalationStep, Pool, Reviewer, SlaPolicy
from shared.events import (
    CaseAssigned,
    CaseReassigned,
    CaseUnassignable,
    FirstOpinionSource,
    RoutingContext,
    ServiceTier,
    SlaBreached,
    SlaWarning,
    Urgency,
)

NY = ZoneInfo("America/New_York")
POLICY = SlaPolicy(
    calendar=CalendarSpec(timezone="America/New_York", holidays="US"),
    tier_hours={"imaging_reread": 24, "multi_specialist": 80},
    urgency_factor={"routine": 1.0, "urgent": 0.25},
    warning_fractions=(0.5, 0.75),
    escalation=(
        EscalationStep(after_hours=4, action="notify"),
        EscalationStep(after_hours=8, action="reassign"),
    ),
    acceptance_hours=4,
)
CTX = RoutingContext(
    subspecialties=["neuroradiology"],
    service_tier=ServiceTier.IMAGING_REREAD,
    jurisdiction="US-CA",
    first_opinion=FirstOpinionSource(institution="Lone Star Radiology"),
)


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


def reviewer(rid: str, **over: object) -> Reviewer:
    base: dict[str, object] = {
        "reviewer_id": rid,
        "name": rid,
        "subspecialties": ["neuroradiology"],
        "licensed_jurisdictions": ["US-CA"],
    }
    return Reviewer.model_validate({**base, **over})


def pool(*rs: Reviewer) -> Pool:
    return Pool(list(rs or (reviewer("a"), reviewer("b"))), {})


MONDAY_9 = ny(2026, 11, 16, 9)  # 24 business hours: due Wednesday 17:00


def opened(p: Pool | None = None) -> domain.Assignment:
    a, events = domain.open_assignment(
        "c1", "t1", CTX, "neuroradiology", MONDAY_9, POLICY, p or pool()
    )
    assert [type(e) for e in events] == [CaseAssigned]
    return a


def test_offer_records_reason_deadline_and_acceptance_window() -> None:
    a = opened()
    assert a.state == "offered" and a.reviewer_id == "a"
    assert a.due_at == ny(2026, 11, 18, 17)
    assert a.accept_by == ny(2026, 11, 16, 13)  # 4 of the reviewer's working hours
    assert "least loaded of 2 eligible" in a.reason
    assert a.next_fire_at == a.accept_by


def test_silent_reviewer_is_replaced_after_the_acceptance_window() -> None:
    a = opened()
    a2, events = domain.fire_due(a, ny(2026, 11, 16, 13, 1), POLICY, pool())
    moved, assigned = events
    assert isinstance(moved, CaseReassigned) and moved.from_reviewer_id == "a"
    assert isinstance(assigned, CaseAssigned) and assigned.reviewer_id == "b"
    assert assigned.reviewer_name == "b"  # reporting names the signer from this
    assert assigned.assignment_id != a.assignment_id == moved.assignment_id
    assert a2.history[0].outcome == "timed_out"
    assert a2.excluded["a"] == "timed out this case earlier"
    # The same firing again (a restart replaying it) emits nothing.
    assert domain.fire_due(a2, ny(2026, 11, 16, 13, 1), POLICY, pool())[1] == []


def test_accept_then_decline_reassigns_and_no_one_left_is_unassignable() -> None:
    a = domain.accept(opened(), ny(2026, 11, 16, 10), POLICY)
    assert a.state == "accepted" and a.accept_by is None
    a, events = domain.reassign(a, ny(2026, 11, 16, 11), POLICY, pool(), "declined", "on leave")
    assert a.reviewer_id == "b" and a.history[0].outcome == "declined"
    a, events = domain.reassign(a, ny(2026, 11, 16, 12), POLICY, pool(), "declined", "conflict")
    assert a.state == "unassignable" and a.reviewer_id is None
    assert isinstance(events[-1], CaseUnassignable)
    assert events[-1].excluded == {
        "a": "declined this case earlier",
        "b": "declined this case earlier",
    }


def test_warnings_breach_and_escalation_ladder_each_fire_once() -> None:
    a = domain.accept(opened(), ny(2026, 11, 16, 9, 30), POLICY)
    a, ev = domain.fire_due(a, ny(2026, 11, 17, 13), POLICY, pool())  # 12 of 24 h
    assert [(type(e), getattr(e, "fraction_elapsed", None)) for e in ev] == [(SlaWarning, 0.5)]
    a, ev = domain.fire_due(a, ny(2026, 11, 17, 13), POLICY, pool())
    assert ev == []
    # The service was down from Tuesday until after the deadline: the stale 75 %
    # warning is skipped, the breach fires once (level 0: operations notified).
    a, ev = domain.fire_due(a, ny(2026, 11, 18, 17, 5), POLICY, pool())
    assert [(type(e), e.escalation_level) for e in ev if isinstance(e, SlaBreached)] == [
        (SlaBreached, 0)
    ]
    assert len(ev) == 1 and domain.sla_status(a, POLICY, ny(2026, 11, 18, 17, 5)) == "breached"
    # Ladder: +4 business hours notify (Thu 13:00), +8 reassign (Thu 17:00).
    a, ev = domain.fire_due(a, ny(2026, 11, 19, 17), POLICY, pool())
    levels = [e.escalation_level for e in ev if isinstance(e, SlaBreached)]
    assert levels == [1, 2]
    assert any(isinstance(e, CaseReassigned) for e in ev) and a.reviewer_id == "b"
    assert a.history[0].outcome == "escalated"


def test_report_stops_the_clock_and_the_timers() -> None:
    a = domain.close(opened(), ny(2026, 11, 17, 9), POLICY)
    assert a.state == "reported" and a.next_fire_at is None
    assert a.turnaround_hours == 24.0
    assert domain.fire_due(a, ny(2026, 12, 30, 9), POLICY, pool())[1] == []


def test_paused_clock_fires_no_sla_timer() -> None:
    a = domain.accept(opened(), ny(2026, 11, 16, 9, 30), POLICY)
    a = domain.pause(a, ny(2026, 11, 16, 10), POLICY, "consent", "release expired", "ops")
    assert a.due_at is None and a.next_fire_at is None
    assert domain.fire_due(a, ny(2026, 12, 30, 9), POLICY, pool())[1] == []
    a = domain.resume(a, ny(2026, 11, 17, 9), POLICY, "consent", "ops")
    assert a.due_at == ny(2026, 11, 19, 16)  # 23 h left from Tuesday 09:00


def test_urgent_case_counts_every_hour() -> None:
    urgent = CTX.model_copy(update={"urgency": Urgency.URGENT})
    a, _ = domain.open_assignment(
        "c2", "t1", urgent, "neuroradiology", ny(2026, 11, 20, 17), POLICY, pool()
    )
    assert a.due_at == ny(2026, 11, 20, 23)  # 24 h x 0.25 around the clock


def test_other_reviewer_of_same_case_is_excluded() -> None:
    p = Pool([reviewer("a"), reviewer("b")], {}, busy_on_case={"a": "pathology"})
    a = opened(p)
    assert a.reviewer_id == "b" and a.excluded == {"a": "already reviewing pathology on this case"}


def test_dashboard_marks_at_risk_and_counts_reported_work() -> None:
    at_risk = domain.accept(opened(), ny(2026, 11, 16, 9, 30), POLICY)
    done = domain.close(opened(), MONDAY_9 + timedelta(hours=10), POLICY)
    assert done.turnaround_hours == 10.0  # what the database summarises per subspecialty
    now = ny(2026, 11, 18, 12)  # 19 of 24 business hours used
    reported = ReportedSummary(
        by_tier={"imaging_reread": 3},
        turnaround=[
            Turnaround(subspecialty="neuroradiology", count=3, median_hours=10.0, p90_hours=12.0)
        ],
    )
    d = summarize([at_risk], reported, [reviewer("a")], {"a": 1}, POLICY, now)
    (row,) = d.cases
    assert row.status == "at_risk" and row.remaining_business_hours == 5.0 and d.at_risk == 1
    stages = {(c.stage, c.tier): c.count for c in d.by_stage_and_tier}
    assert stages == {("accepted", "imaging_reread"): 1, ("reported", "imaging_reread"): 3}
    assert d.turnaround == reported.turnaround and d.reviewers[0].load == 1


def test_case_waiting_on_capacity_is_offered_when_capacity_frees() -> None:
    busy = Pool([reviewer("a", capacity=1)], {"a": 1})
    waiting, events = domain.open_assignment(
        "c2", "t1", CTX, "neuroradiology", MONDAY_9, POLICY, busy
    )
    assert waiting.state == "unassignable" and "at capacity" in waiting.excluded["a"]
    still, none = domain.retry_unassignable(waiting, MONDAY_9, POLICY, busy)
    assert still == waiting and none == []  # no second alert while nothing changed
    freed = Pool([reviewer("a", capacity=1)], {"a": 0})
    offered, events = domain.retry_unassignable(waiting, MONDAY_9, POLICY, freed)
    assert offered.state == "offered" and offered.reviewer_id == "a"
    assert [type(e) for e in events] == [CaseAssigned]


def test_failed_re_offer_records_the_try_so_the_case_goes_to_the_back_of_the_queue() -> None:
    """Issue 21: the re-offer queue is ordered by the last try; a case no reviewer
    can take must move behind the others each time it is tried."""
    nobody = Pool([reviewer("a", licensed_jurisdictions=["US-NY"])], {})
    waiting, _ = domain.open_assignment("c3", "t1", CTX, "neuroradiology", MONDAY_9, POLICY, nobody)
    assert waiting.state == "unassignable" and waiting.tried_at == MONDAY_9
    later = MONDAY_9 + timedelta(minutes=5)
    still, events = domain.retry_unassignable(waiting, later, POLICY, nobody)
    assert still.state == "unassignable" and events == []
    assert still.tried_at == later


def test_open_subspecialties_are_those_of_active_reviewers_below_capacity() -> None:
    full = reviewer("a", capacity=2)
    assert domain.open_subspecialties(Pool([full], {"a": 2})) == set()
    assert domain.open_subspecialties(Pool([full], {"a": 1})) == {"neuroradiology"}
    gone = reviewer("b", active=False, subspecialties=["pathology"])
    assert domain.open_subspecialties(Pool([full, gone], {"a": 1})) == {"neuroradiology"}


def test_the_offer_names_the_reviewers_npi_and_the_licence_it_is_made_under() -> None:
    """Reporting prints and signs these (docs/reporting.md); the roster holds the NPI."""
    _, events = domain.open_assignment(
        "c1", "t1", CTX, "neuroradiology", MONDAY_9, POLICY, pool(reviewer("a", npi="1234567802"))
    )
    (assigned,) = events
    assert isinstance(assigned, CaseAssigned)
    assert assigned.reviewer_npi == "1234567802"
    assert assigned.reviewer_licence_jurisdiction == CTX.jurisdiction == "US-CA"
    with pytest.raises(ValueError):
        reviewer("x", npi="12345")  # not ten digits: the roster is refused


# ---------------------------------------------------------------- operator reassign


def test_operator_reassigns_to_a_named_eligible_reviewer_and_the_first_is_escalated() -> None:
    p = pool(reviewer("a"), reviewer("b"), reviewer("c"))
    a = opened(p)
    assert a.reviewer_id == "a"
    moved, events = domain.reassign_by_operator(
        a, MONDAY_9, POLICY, p, "reviewer on leave", "operations:ops", to="c"
    )
    assert moved.state == "offered" and moved.reviewer_id == "c"  # not b, the least loaded
    assert moved.assignment_id != a.assignment_id
    assert [(h.reviewer_id, h.outcome, h.reason) for h in moved.history] == [
        ("a", "escalated", "operations:ops: reviewer on leave")
    ]
    assert [type(e) for e in events] == [CaseReassigned, CaseAssigned]
    assert isinstance(events[0], CaseReassigned) and events[0].to_reviewer_id == "c"
    assert a.reviewer_id == "a"  # pure: the input is not changed


def test_operator_cannot_name_an_ineligible_reviewer() -> None:
    p = pool(
        reviewer("a"),
        reviewer("tx", licensed_jurisdictions=["US-TX"]),
        reviewer("full", capacity=1),
        reviewer("body", subspecialties=["body_imaging"]),
    )
    p.load["full"] = 1
    a = opened(p)
    for to, why in [
        ("tx", "not licensed in US-CA"),
        ("full", "at capacity (1/1)"),
        ("body", "not a neuroradiology reviewer"),
        ("nobody", "not on the roster"),
        ("a", "already has this assignment"),
    ]:
        with pytest.raises(domain.NotEligible, match=f"{to}: {re.escape(why)}"):
            domain.reassign_by_operator(a, MONDAY_9, POLICY, p, "why", "operations:ops", to=to)
    # Without a name: the next eligible reviewer, or unassignable with the reason.
    moved, _ = domain.reassign_by_operator(a, MONDAY_9, POLICY, p, "why", "operations:ops")
    assert moved.state == "unassignable" and moved.reason == "no eligible neuroradiology reviewer"
    again, _ = domain.reassign_by_operator(moved, MONDAY_9, POLICY, p, "why", "operations:ops")
    with pytest.raises(domain.NotEligible, match="a: escalated this case earlier"):
        domain.reassign_by_operator(again, MONDAY_9, POLICY, p, "why", "operations:ops", to="a")

"""The status model (services/intake/progress.py): every followed event in every
stage. A stage is reached only by the event that means it and only after the one
before it; nothing goes back; a notification moves nothing but its audience's
delivery entry, and `delivered` waits for the tenant's policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.intake import progress
from services.intake.progress import DeliveryPolicy, Progress, Stage
from shared.events import (
    CaseAssigned,
    CaseReassigned,
    CaseUnassignable,
    ManifestItem,
    NotificationDelivered,
    RecordKind,
    RecordsComplete,
    RecordsIncomplete,
    RecordsProgress,
    ReportLinks,
    ReportReady,
    ReportSubmitted,
    RoutingContext,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
IDS = {"case_id": "case-1", "tenant_id": "t"}
PARTNER: tuple[progress.Audience, ...] = ("partner",)


def notice(
    event_type: str, status: str = "delivered", audience: str = "partner", n: int = 1
) -> NotificationDelivered:
    return NotificationDelivered(
        **IDS,
        delivery_id=f"d-{event_type}-{status}-{audience}-{n}",
        event_type=event_type,
        channel="webhook" if audience == "partner" else "email",
        status=status,
        audience=audience,
    )


EVENTS: dict[str, progress.Followed] = {
    "records.progress": RecordsProgress(
        **IDS, provider_id="pacs", kind=RecordKind.IMAGING, state="failed", reason="answered 503"
    ),
    "records.incomplete": RecordsIncomplete(
        **IDS,
        missing=[
            ManifestItem(
                kind=RecordKind.IMAGING,
                present=False,
                detail="prior_studies: no prior study found at the provider",
            )
        ],
        attempt=2,
        next_retry_at=T0 + timedelta(hours=1),
    ),
    "records.complete": RecordsComplete(
        **IDS,
        routing=RoutingContext(subspecialties=["cardiology"], jurisdiction="US-CA"),
        manifest=[],
        completed_at=T0,
    ),
    "case.assigned": CaseAssigned(
        **IDS,
        assignment_id="a1",
        reviewer_id="rev-1",
        subspecialty="cardiology",
        due_at=T0 + timedelta(days=3),
        reason="matched",
    ),
    "case.reassigned": CaseReassigned(
        **IDS, assignment_id="a1", from_reviewer_id="rev-1", reason="reviewer declined"
    ),
    "case.unassignable": CaseUnassignable(
        **IDS, subspecialty="cardiology", reason="no eligible cardiology reviewer"
    ),
    "report.submitted": ReportSubmitted(
        **IDS, report_id="r1", reviewer_id="rev-1", concordance="confirmed"
    ),
    "report.ready": ReportReady(
        **IDS,
        report_id="r1",
        reviewer_id="rev-1",
        concordance="confirmed",
        signed_at=T0,
        content_sha256="0" * 64,
        links=ReportLinks(report="https://r.example/v1/reports/r1"),
    ),
    "notification.delivered(records.incomplete)": notice("records.incomplete"),
    "notification.delivered(report.ready, dead_letter)": notice("report.ready", "dead_letter"),
    "notification.delivered(report.ready)": notice("report.ready"),
}
# The one stage each event may reach (the notification of the report: delivered,
# when the policy's audiences have it); the others reach none.
MEANS: dict[str, Stage] = {
    "records.complete": "records_complete",
    "case.assigned": "assigned",
    "report.submitted": "report_submitted",
    "report.ready": "report_ready",
    "notification.delivered(report.ready)": "delivered",
}
CHAIN: list[Stage] = ["accepted", *progress.DOWNSTREAM]
# The facts a case at each stage has (as if it got there by its own events).
FACTS_BEFORE = {
    "records_complete": ["records.complete"],
    "assigned": ["records.complete", "case.assigned"],
    "report_submitted": ["records.complete", "case.assigned", "report.submitted"],
    "report_ready": ["records.complete", "case.assigned", "report.submitted", "report.ready"],
}


def at_stage(stage: Stage) -> Progress:
    p = Progress()
    for name in FACTS_BEFORE.get(stage, []):
        p = progress.apply("accepted", p, EVENTS[name], T0, T0, PARTNER).progress
    if stage == "delivered":
        p = at_stage("report_ready")
        p = progress.apply(
            "report_ready", p, EVENTS["notification.delivered(report.ready)"], T0, T0, PARTNER
        ).progress
    return p


@pytest.mark.parametrize("stage", [*progress.STAGES, "declined"])
@pytest.mark.parametrize("name", list(EVENTS))
def test_every_event_in_every_stage(stage: Stage, name: str) -> None:
    before = at_stage(stage)
    step = progress.apply(stage, before, EVENTS[name], T0 + timedelta(minutes=5), T0, PARTNER)
    assert progress.stage_rank(step.stage) >= progress.stage_rank(stage) or stage == "declined"
    if stage == "declined" or stage not in CHAIN:
        assert step.stage == stage and not step.reached  # nothing moves a case outside the chain
        return
    nxt = CHAIN[CHAIN.index(stage) + 1] if stage != "delivered" else None
    if MEANS.get(name) == nxt and nxt is not None:
        assert step.stage == nxt
        assert [r.stage for r in step.reached] == [nxt]
        assert step.reached[0].at == T0 + timedelta(minutes=5)
        assert step.reached[0].recorded_at == T0
    else:
        assert step.stage == stage and not step.reached, (stage, name, step.stage)


def test_an_event_overtaking_its_predecessor_waits_and_the_history_has_no_gap() -> None:
    p = at_stage("assigned")
    step = progress.apply(
        "assigned", p, EVENTS["report.ready"], T0 + timedelta(minutes=3), T0, PARTNER
    )
    assert step.stage == "assigned" and not step.reached  # report.ready read first: waits
    step = progress.apply(
        "assigned",
        step.progress,
        EVENTS["report.submitted"],
        T0 + timedelta(minutes=2),
        T0,
        PARTNER,
    )
    assert [r.stage for r in step.reached] == ["report_submitted", "report_ready"]
    assert [r.at.minute for r in step.reached] == [2, 3]


def test_a_delivered_records_notice_and_a_dead_lettered_report_show_in_delivery_only() -> None:
    p = at_stage("accepted")
    incomplete = progress.apply("accepted", p, EVENTS["records.incomplete"], T0, T0, PARTNER)
    step = progress.apply(
        "accepted", incomplete.progress, notice("records.incomplete"), T0, T0, PARTNER
    )
    assert step.stage == "accepted"
    partner = step.progress.delivery["partner"]
    assert partner.report == "not_sent"
    assert [(n.event_type, n.status) for n in partner.notices] == [
        ("records.incomplete", "delivered")
    ]
    assert (
        progress.waiting_for("accepted", step.progress, PARTNER)
        == [
            "the records: prior_studies: no prior study found at the provider",
            "the records: pacs/imaging retrieval failed: answered 503",
            f"the records: attempt 3 at {(T0 + timedelta(hours=1)).isoformat()} "
            "(re-requested from the providers)",
        ][::2]
    )

    ready = at_stage("report_ready")
    step = progress.apply(
        "report_ready", ready, notice("report.ready", "dead_letter"), T0, T0, PARTNER
    )
    assert step.stage == "report_ready"
    assert step.progress.delivery["partner"].report == "failed"
    assert step.progress.delivery["partner"].report_at == T0
    assert progress.waiting_for("report_ready", step.progress, PARTNER) == [
        "delivery of the report to the partner: failed (dead letter); "
        "resend it from notify's delivery log"
    ]
    resent = progress.apply(
        "report_ready",
        step.progress,
        notice("report.ready", n=2),
        T0 + timedelta(hours=1),
        T0,
        PARTNER,
    )
    assert resent.stage == "delivered"
    assert resent.reached[0].at == T0 + timedelta(hours=1)


def test_delivered_waits_for_every_audience_the_policy_requires() -> None:
    policy = DeliveryPolicy(audiences=("partner", "treating_clinician"))
    both = policy.required(has_treating_clinician=True)
    assert policy.required(has_treating_clinician=False) == ("partner",)
    p = at_stage("report_submitted")
    step = progress.apply("report_submitted", p, EVENTS["report.ready"], T0, T0, both)
    assert {a: d.report for a, d in step.progress.delivery.items()} == {
        "partner": "pending",
        "treating_clinician": "pending",
    }
    step = progress.apply(step.stage, step.progress, notice("report.ready"), T0, T0, both)
    assert step.stage == "report_ready"
    assert progress.waiting_for(step.stage, step.progress, both) == [
        "delivery of the report to the treating clinician: pending"
    ]
    later = T0 + timedelta(minutes=9)
    step = progress.apply(
        step.stage,
        step.progress,
        notice("report.ready", audience="treating_clinician"),
        later,
        T0,
        both,
    )
    assert step.stage == "delivered" and step.reached[0].at == later


def test_the_assignment_state_in_plain_words() -> None:
    p = at_stage("records_complete")
    step = progress.apply("records_complete", p, EVENTS["case.unassignable"], T0, T0, PARTNER)
    assert step.stage == "records_complete"
    (line,) = progress.waiting_for("records_complete", step.progress, PARTNER)
    assert (
        line == "a reviewer: no eligible cardiology reviewer on the roster; operations are alerted"
    )
    step = progress.apply(
        "records_complete", step.progress, EVENTS["case.assigned"], T0, T0, PARTNER
    )
    assert step.stage == "assigned"
    assert progress.waiting_for("assigned", step.progress, PARTNER)[0].startswith(
        "the reviewer's opinion (reviewer rev-1, due "
    )
    step = progress.apply("assigned", step.progress, EVENTS["case.reassigned"], T0, T0, PARTNER)
    assert step.stage == "assigned"  # never back
    assert progress.waiting_for("assigned", step.progress, PARTNER) == [
        "a new reviewer: reviewer declined; the case is being offered to another"
    ]


def test_the_same_notification_twice_is_recorded_once() -> None:
    p = at_stage("report_ready")
    once = progress.apply("report_ready", p, notice("report.ready", "dead_letter"), T0, T0, PARTNER)
    twice = progress.apply(
        "report_ready", once.progress, notice("report.ready", "dead_letter"), T0, T0, PARTNER
    )
    assert twice.progress == once.progress

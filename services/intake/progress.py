"""A case's progress as intake shows it (`GET /v1/cases/{id}`, the FHIR `Task`,
`case.status`): pure rules, no I/O, time passed in.

Intake follows the case downstream through the events other services publish.
Each event is recorded as a *fact*; the stage is derived from the facts, in the
one order a case goes through:

    accepted → records_complete → assigned → report_submitted → report_ready → delivered

- A stage is reached only through the event that means it (`records.complete`
  → records_complete, `case.assigned` → assigned, `report.submitted` →
  report_submitted, `report.ready` → report_ready), and only once every stage
  before it is reached: an event that overtakes its predecessor on another topic
  (report.ready read before report.submitted) waits as a fact and the two stages
  are reached, in order, when the predecessor arrives. The history has no gaps,
  and the stage never goes back.
- `delivered` is reached when the report reached every audience the tenant's
  delivery policy requires (`DeliveryPolicy`), not on any notification: a
  delivered `records.incomplete` notice, or a webhook that went to the dead
  letter, changes the audience's `delivery` entry and nothing else.
- Everything else an integrator needs to know is kept in plain words: what the
  records manifest still misses (`records.incomplete`, `records.progress`), the
  assignment's state (`case.unassignable`: "no eligible cardiology reviewer on
  the roster"), and per audience whether the report is pending, delivered or
  failed, and when. `waiting_for` turns it into the lines an integrator reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from shared.events import (
    CaseAssigned,
    CaseReassigned,
    CaseUnassignable,
    NotificationDelivered,
    RecordsComplete,
    RecordsIncomplete,
    RecordsProgress,
    ReportReady,
    ReportSubmitted,
)

Stage = Literal[
    "received",
    "held_for_review",
    "awaiting_authorization",
    "accepted",
    "records_complete",
    "assigned",
    "report_submitted",
    "report_ready",
    "delivered",
    "declined",
]
# The order of the stages; `declined` ends a case outside it.
STAGES: tuple[Stage, ...] = tuple(s for s in get_args(Stage) if s != "declined")
# The stages reached downstream, each by its own event (delivered: by the policy).
DOWNSTREAM: tuple[Stage, ...] = STAGES[STAGES.index("accepted") + 1 :]
EVENT_STAGE: dict[type[BaseModel], Stage] = {
    RecordsComplete: "records_complete",
    CaseAssigned: "assigned",
    ReportSubmitted: "report_submitted",
    ReportReady: "report_ready",
}
FOLLOWED: tuple[type[BaseModel], ...] = (
    RecordsProgress,
    RecordsIncomplete,
    RecordsComplete,
    CaseAssigned,
    CaseReassigned,
    CaseUnassignable,
    ReportSubmitted,
    ReportReady,
    NotificationDelivered,
)
Followed = (
    RecordsProgress
    | RecordsIncomplete
    | RecordsComplete
    | CaseAssigned
    | CaseReassigned
    | CaseUnassignable
    | ReportSubmitted
    | ReportReady
    | NotificationDelivered
)

Audience = Literal["partner", "treating_clinician", "patient_portal"]
AUDIENCE_WORDS: dict[str, str] = {
    "partner": "the partner",
    "treating_clinician": "the treating clinician",
    "patient_portal": "the patient portal",
}
ReportDeliveryState = Literal["not_sent", "pending", "delivered", "failed"]
REPORT_EVENT = "report.ready"
MAX_NOTICES = 10  # per audience, the latest kept
MAX_FETCHES = 20  # provider/kind retrieval states kept


def stage_rank(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else -1


class StageRecord(BaseModel):
    """A stage reached: `at` when it happened, `recorded_at` when intake heard of it
    (downstream stages only)."""

    stage: Stage
    at: datetime
    recorded_at: datetime | None = None


class DeliveryPolicy(BaseModel):
    """Whom a report must reach before the case is `delivered` (INTAKE_DELIVERY_POLICY,
    per tenant). `treating_clinician` counts only for a case that names one
    (`treating_clinician_email`): a case without one cannot wait for it."""

    model_config = ConfigDict(frozen=True)
    audiences: tuple[Audience, ...] = ("partner",)

    def required(self, has_treating_clinician: bool) -> tuple[Audience, ...]:
        return tuple(
            a for a in self.audiences if a != "treating_clinician" or has_treating_clinician
        )


class Notice(BaseModel):
    """One notification notify finished for this audience: delivered, or failed for
    good (its dead letter: notify's delivery log can resend it)."""

    event_type: str
    channel: str
    status: Literal["delivered", "failed"]
    delivery_id: str
    at: datetime


class AudienceDelivery(BaseModel):
    """What reached one audience: the report's state and time, and the latest notices."""

    report: ReportDeliveryState = "not_sent"
    report_at: datetime | None = None
    notices: list[Notice] = []


class MissingItem(BaseModel):
    kind: str
    detail: str


class RecordsView(BaseModel):
    """The records as records_fetch last told: what is still missing and why."""

    state: Literal["not_started", "retrieving", "incomplete", "complete"] = "not_started"
    missing: list[MissingItem] = []
    attempt: int = 0
    next_retry_at: datetime | None = None
    gave_up: bool = False
    # "provider/kind" → "failed: <reason>" for retrievals that failed (records.progress).
    failures: dict[str, str] = {}


class AssignmentView(BaseModel):
    """The assignment as the assignment service last told."""

    state: Literal["not_started", "assigned", "reassigning", "unassignable"] = "not_started"
    subspecialty: str = ""
    reviewer_id: str = ""
    due_at: datetime | None = None
    reason: str = ""


class Progress(BaseModel):
    """Everything intake knows of a case downstream (stored in the case document)."""

    model_config = ConfigDict(extra="ignore")
    # Downstream stage → when its event says it happened (the facts the stage is derived from).
    reached: dict[str, datetime] = {}
    report_id: str = ""
    records: RecordsView = RecordsView()
    assignment: AssignmentView = AssignmentView()
    delivery: dict[str, AudienceDelivery] = Field(default_factory=dict)


class Step(BaseModel):
    """The outcome of one event: the new stage, the stages newly reached (in order,
    each with its history record) and the new progress."""

    stage: Stage
    reached: list[StageRecord]
    progress: Progress

    @property
    def moved(self) -> bool:
        return bool(self.reached)


def apply(
    stage: Stage,
    progress: Progress,
    event: Followed,
    at: datetime,
    now: datetime,
    required: tuple[Audience, ...],
) -> Step:
    """The case after `event` (which happened `at`, heard of `now`), given the
    audiences the report must reach (`DeliveryPolicy.required`)."""
    p = progress.model_copy(deep=True)
    _record(p, event, at, required)
    return advance(stage, p, now, required)


def advance(stage: Stage, p: Progress, now: datetime, required: tuple[Audience, ...]) -> Step:
    """Reach, in order, every next stage whose fact is there; stop at the first missing."""
    reached: list[StageRecord] = []
    if stage not in ("accepted", *DOWNSTREAM):
        return Step(stage=stage, reached=reached, progress=p)
    for nxt in DOWNSTREAM[DOWNSTREAM.index(stage) + 1 if stage in DOWNSTREAM else 0 :]:
        when = delivered_at(p, required) if nxt == "delivered" else p.reached.get(nxt)
        if when is None:
            break
        stage = nxt
        reached.append(StageRecord(stage=nxt, at=when, recorded_at=now))
    return Step(stage=stage, reached=reached, progress=p)


def delivered_at(p: Progress, required: tuple[Audience, ...]) -> datetime | None:
    """When the report reached the last required audience; None while one has not."""
    if not required or "report_ready" not in p.reached:
        return None
    times = []
    for audience in required:
        d = p.delivery.get(audience)
        if d is None or d.report != "delivered" or d.report_at is None:
            return None
        times.append(d.report_at)
    return max(times)


def _record(p: Progress, event: Followed, at: datetime, required: tuple[Audience, ...]) -> None:
    if (stage := EVENT_STAGE.get(type(event))) is not None:
        p.reached.setdefault(stage, at)
    match event:
        case RecordsProgress():
            _records_progress(p.records, event)
        case RecordsIncomplete():
            if p.records.state != "complete":
                p.records.state = "incomplete"
                p.records.missing = [
                    MissingItem(kind=m.kind.value, detail=m.detail) for m in event.missing
                ]
                p.records.attempt = event.attempt
                p.records.next_retry_at = event.next_retry_at
                p.records.gave_up = event.gave_up
        case RecordsComplete():
            p.records = RecordsView(state="complete")
        case CaseAssigned():
            p.assignment = AssignmentView(
                state="assigned",
                subspecialty=event.subspecialty,
                reviewer_id=event.reviewer_id,
                due_at=event.due_at,
            )
        case CaseReassigned():
            # A withdrawn offer (the subspecialty no longer needed) is in the routing's
            # reroutes, not a wait for a reviewer.
            if not event.to_reviewer_id and not event.withdrawn:
                a = p.assignment
                p.assignment = a.model_copy(
                    update={"state": "reassigning", "reviewer_id": "", "reason": event.reason}
                )
        case CaseUnassignable():
            p.assignment = AssignmentView(
                state="unassignable", subspecialty=event.subspecialty, reason=event.reason
            )
        case ReportSubmitted():
            p.report_id = p.report_id or event.report_id
        case ReportReady():
            p.report_id = event.report_id
            for audience in required:
                d = p.delivery.setdefault(audience, AudienceDelivery())
                if d.report == "not_sent":
                    d.report = "pending"
        case NotificationDelivered():
            _notification(p, event, at)


def _records_progress(r: RecordsView, event: RecordsProgress) -> None:
    if r.state == "not_started":
        r.state = "retrieving"
    key = f"{event.provider_id}/{event.kind.value}"
    if event.state == "failed":
        if key in r.failures or len(r.failures) < MAX_FETCHES:
            r.failures[key] = f"failed: {event.reason}" if event.reason else "failed"
    else:
        r.failures.pop(key, None)


def _notification(p: Progress, event: NotificationDelivered, at: datetime) -> None:
    d = p.delivery.setdefault(event.audience, AudienceDelivery())
    status: Literal["delivered", "failed"] = (
        "delivered" if event.status == "delivered" else "failed"
    )
    if any(n.delivery_id == event.delivery_id and n.status == status for n in d.notices):
        return  # the same outcome told twice (a resend that failed again)
    notice = Notice(
        event_type=event.event_type,
        channel=event.channel,
        status=status,
        delivery_id=event.delivery_id,
        at=at,
    )
    d.notices = [*d.notices, notice][-MAX_NOTICES:]
    if event.event_type != REPORT_EVENT:
        return
    # One delivery of the report to this audience is enough; a later failure of
    # another subscription of the same audience does not undo it.
    if d.report != "delivered":
        d.report = status
        d.report_at = at


# ---------------------------------------------------------------- in plain words


def reviewer_words(subspecialty: str) -> str:
    """`cardiology` → "cardiology reviewer" (the router's own word for it)."""
    return f"{subspecialty.replace('_', ' ')} reviewer" if subspecialty else "reviewer"


def waiting_for(stage: Stage, p: Progress, required: tuple[Audience, ...]) -> list[str]:
    """What a case at `stage` waits for, in the words an integrator acts on."""
    if stage == "accepted":
        return _records_words(p.records)
    if stage == "records_complete":
        return _assignment_words(p.assignment)
    if stage == "assigned":
        a = p.assignment
        due = f", due {a.due_at.isoformat()}" if a.due_at else ""
        if a.state == "reassigning":
            return [f"a new reviewer: {a.reason}; the case is being offered to another"]
        if a.state == "unassignable":
            return _assignment_words(a)
        return [f"the reviewer's opinion (reviewer {a.reviewer_id}{due})"]
    if stage == "report_submitted":
        return ["the signed report (the opinion is submitted; the report is being issued)"]
    if stage == "report_ready":
        return _delivery_words(p, required)
    return []


def _records_words(r: RecordsView) -> list[str]:
    if r.state in ("not_started", "retrieving") and not r.failures:
        return ["the records: retrieval from the providers is under way"]
    lines = [f"the records: {m.detail}" for m in r.missing]
    lines += [f"the records: {key} retrieval {why}" for key, why in sorted(r.failures.items())]
    if r.gave_up:
        lines.append(
            f"the records: retrieval stopped after {r.attempt} attempts; "
            "operations decide whether the case goes on without them"
        )
    elif r.next_retry_at is not None:
        lines.append(
            f"the records: attempt {r.attempt + 1} at {r.next_retry_at.isoformat()} "
            "(re-requested from the providers)"
        )
    return lines or ["the records: retrieval from the providers is under way"]


def _assignment_words(a: AssignmentView) -> list[str]:
    if a.state == "unassignable":
        line = f"a reviewer: no eligible {reviewer_words(a.subspecialty)} on the roster"
        # The assignment service's reason, when it says more than that.
        if a.reason and not a.reason.startswith("no eligible"):
            line += f" ({a.reason})"
        return [line + "; operations are alerted"]
    if a.state == "reassigning":
        return [f"a new reviewer: {a.reason}; the case is being offered to another"]
    return ["a reviewer: the case is being matched to an independent subspecialist"]


def _delivery_words(p: Progress, required: tuple[Audience, ...]) -> list[str]:
    lines = []
    for audience in required:
        d = p.delivery.get(audience, AudienceDelivery())
        who = AUDIENCE_WORDS.get(audience, audience)
        if d.report == "failed":
            lines.append(
                f"delivery of the report to {who}: failed (dead letter); "
                "resend it from notify's delivery log"
            )
        elif d.report != "delivered":
            lines.append(f"delivery of the report to {who}: pending")
    return lines

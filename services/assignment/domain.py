"""assignment's domain, free of I/O: who may review a case, who should, and the
review clock with its timers.

Matching (docs/sla.md; docs/architecture.md, "Where each rule of the field
lives"): subspecialty, independence from the first opinion, licensure for the
patient's jurisdiction, then workload. Every decision
carries its reasons, for the chosen reviewer and for each excluded one.

One `Assignment` is one needed subspecialty of a case (a multi-specialist case
has several). It moves offered → accepted → reported; a decline or a silent
acceptance window reassigns it (a new assignment id for the new reviewer); no
eligible reviewer leaves it `unassignable`. Its `ReviewClock` counts business
time on the organisation's calendar and is paused with a recorded reason. Timers
(acceptance window, warnings, breach, escalation ladder) are not stored as a
separate schedule: they are derived from the assignment's state and the keys of
those already fired, so a restart recomputes exactly what is still due.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.assignment.calendar import AROUND_THE_CLOCK, BusinessCalendar, CalendarSpec
from shared.events import (
    CaseAssigned,
    CaseReassigned,
    CaseUnassignable,
    Event,
    ImageLink,
    RoutingContext,
    SlaBreached,
    SlaWarning,
)
from shared.vocabulary import Subspecialty

OPEN_STATES = ("offered", "accepted", "unassignable")
ACTIVE_STATES = ("offered", "accepted")  # what counts towards a reviewer's load

# ---------------------------------------------------------------- roster and matching


class Reviewer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reviewer_id: str = Field(min_length=1, max_length=64)
    name: str
    credentials: str = ""
    npi: str = Field(
        default="", pattern=r"^(|\d{10})$", description="US National Provider Identifier"
    )
    # The codes of shared.vocabulary (the wire values): an unknown code is refused.
    subspecialties: list[Subspecialty]
    board_certifications: list[str] = []
    licensed_jurisdictions: list[str]
    affiliations: list[str] = Field(default=[], description="Practices, groups, institutions")
    capacity: int = Field(default=5, ge=0)
    timezone: str = "UTC"
    working_hours: CalendarSpec | None = Field(
        default=None, description="The reviewer's own calendar (acceptance window); org default"
    )
    active: bool = True


@dataclass
class Decision:
    subspecialty: str
    reviewer: Reviewer | None
    reason: str
    excluded: dict[str, str] = field(default_factory=dict)


def _conflicts(r: Reviewer, ctx: RoutingContext) -> set[str]:
    first = ctx.first_opinion
    mine = {a.strip().lower() for a in r.affiliations}
    theirs = {a.strip().lower() for a in [first.institution, *first.affiliations] if a}
    return mine & theirs


def _exclusion(r: Reviewer, subspecialty: str, ctx: RoutingContext, load: int) -> str | None:
    """Why `r` may not take this case, or None if eligible."""
    if not r.active:
        return "inactive"
    if subspecialty not in r.subspecialties:
        return f"not a {subspecialty} reviewer"
    conflicts = _conflicts(r, ctx)
    if conflicts or (
        ctx.first_opinion.clinician_id and r.reviewer_id == ctx.first_opinion.clinician_id
    ):
        shared = ", ".join(sorted(conflicts)) or "identity"
        return f"not independent of the first opinion (shares {shared})"
    if ctx.jurisdiction not in r.licensed_jurisdictions:
        return f"not licensed in {ctx.jurisdiction}"
    if load >= r.capacity:
        return f"at capacity ({load}/{r.capacity})"
    return None


def choose_reviewer(
    subspecialty: str,
    ctx: RoutingContext,
    roster: list[Reviewer],
    load: dict[str, int],
    exclude: dict[str, str] | None = None,
) -> Decision:
    """The least-loaded eligible reviewer for one subspecialty of the case.

    `exclude` names reviewers ruled out by the case's own history (declined,
    silent, already reviewing another part of the same case), with the reason."""
    exclude = exclude or {}
    excluded: dict[str, str] = {}
    eligible: list[Reviewer] = []
    for r in roster:
        why = exclude.get(r.reviewer_id) or _exclusion(
            r, subspecialty, ctx, load.get(r.reviewer_id, 0)
        )
        if why:
            excluded[r.reviewer_id] = why
        else:
            eligible.append(r)
    if not eligible:
        return Decision(subspecialty, None, f"no eligible {subspecialty} reviewer", excluded)
    best = min(
        eligible, key=lambda r: (load.get(r.reviewer_id, 0) / max(r.capacity, 1), r.reviewer_id)
    )
    reason = (
        f"{subspecialty}; independent of {ctx.first_opinion.institution or 'first opinion'}; "
        f"licensed in {ctx.jurisdiction}; load {load.get(best.reviewer_id, 0)}/{best.capacity}"
        f" (least loaded of {len(eligible)} eligible)"
    )
    return Decision(subspecialty, best, reason, excluded)


def needed_subspecialties(routing: RoutingContext) -> list[str]:
    """One reviewer per subspecialty the case needs, whatever the tier: who is needed
    is clinical (intake decides it, docs/clinical-rules.md); the tier sets the
    deadline, and a need beyond it is recorded by intake for operations."""
    return list(dict.fromkeys(routing.subspecialties))


# ---------------------------------------------------------------- the SLA policy


class EscalationStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    after_hours: float = Field(ge=0, description="Business hours after the deadline")
    action: Literal["notify", "reassign"]


@dataclass(frozen=True)
class SlaPolicy:
    """The configurable rules of the review SLA (built from settings)."""

    calendar: CalendarSpec
    tier_hours: dict[str, float]
    urgency_factor: dict[str, float]
    around_the_clock_urgencies: tuple[str, ...] = ("urgent",)
    warning_fractions: tuple[float, ...] = (0.5, 0.75, 0.9)
    at_risk_fraction: float = 0.75
    escalation: tuple[EscalationStep, ...] = ()
    acceptance_hours: float = 4.0
    default_tier_hours: float = 50.0

    def budget_hours(self, routing: RoutingContext) -> float:
        base = self.tier_hours.get(routing.service_tier.value, self.default_tier_hours)
        return base * self.urgency_factor.get(routing.urgency.value, 1.0)

    def calendar_for(self, clock: ReviewClock) -> BusinessCalendar:
        return BusinessCalendar(AROUND_THE_CLOCK if clock.around_the_clock else self.calendar)

    def reviewer_calendar(self, reviewer: Reviewer) -> BusinessCalendar:
        return BusinessCalendar(reviewer.working_hours or self.calendar)


# ---------------------------------------------------------------- the review clock


class Pause(BaseModel):
    kind: str
    reason: str
    by: str
    paused_at: datetime
    resumed_at: datetime | None = None
    resumed_by: str = ""


class ReviewClock(BaseModel):
    """Business time used by a review. Running iff `running_since` is set."""

    budget_seconds: float
    around_the_clock: bool = False
    started_at: datetime
    consumed_seconds: float = 0.0  # business seconds used before running_since
    running_since: datetime | None = None
    paused_for: list[str] = []  # kinds of open pauses: the clock runs when empty
    pauses: list[Pause] = []
    stopped_at: datetime | None = None


def start_clock(routing: RoutingContext, now: datetime, policy: SlaPolicy) -> ReviewClock:
    return ReviewClock(
        budget_seconds=policy.budget_hours(routing) * 3600,
        around_the_clock=routing.urgency.value in policy.around_the_clock_urgencies,
        started_at=now,
        running_since=now,
    )


def elapsed(clock: ReviewClock, cal: BusinessCalendar, now: datetime) -> float:
    running = cal.between(clock.running_since, now) if clock.running_since else 0.0
    return clock.consumed_seconds + running


def deadline(clock: ReviewClock, cal: BusinessCalendar) -> datetime | None:
    """When the budget runs out if nothing pauses the clock (None while paused)."""
    if clock.running_since is None:
        return None
    return cal.add(clock.running_since, clock.budget_seconds - clock.consumed_seconds)


def projected_deadline(clock: ReviewClock, cal: BusinessCalendar, now: datetime) -> datetime:
    """The deadline, or for a paused clock the deadline if it resumed now."""
    due = deadline(clock, cal)
    return due or cal.add(now, clock.budget_seconds - clock.consumed_seconds)


def when_fraction_reached(clock: ReviewClock, cal: BusinessCalendar, f: float) -> datetime | None:
    if clock.running_since is None:
        return None
    return cal.add(clock.running_since, f * clock.budget_seconds - clock.consumed_seconds)


def pause_clock(
    clock: ReviewClock, cal: BusinessCalendar, now: datetime, kind: str, reason: str, by: str
) -> ReviewClock:
    """Stop counting while waiting on `kind` (records, consent, ...); idempotent per kind."""
    if kind in clock.paused_for or clock.stopped_at:
        return clock
    return clock.model_copy(
        update={
            "consumed_seconds": elapsed(clock, cal, now),
            "running_since": None,
            "paused_for": [*clock.paused_for, kind],
            "pauses": [*clock.pauses, Pause(kind=kind, reason=reason, by=by, paused_at=now)],
        }
    )


def resume_clock(clock: ReviewClock, now: datetime, kind: str, by: str) -> ReviewClock:
    """End the pause for `kind`; the clock runs again once no pause is open."""
    if kind not in clock.paused_for:
        return clock
    pauses = [
        p.model_copy(update={"resumed_at": now, "resumed_by": by})
        if p.kind == kind and p.resumed_at is None
        else p
        for p in clock.pauses
    ]
    left = [k for k in clock.paused_for if k != kind]
    return clock.model_copy(
        update={
            "paused_for": left,
            "pauses": pauses,
            "running_since": None if left or clock.stopped_at else now,
        }
    )


def stop_clock(clock: ReviewClock, cal: BusinessCalendar, now: datetime) -> ReviewClock:
    return clock.model_copy(
        update={
            "consumed_seconds": elapsed(clock, cal, now),
            "running_since": None,
            "stopped_at": now,
        }
    )


# ---------------------------------------------------------------- assignments


class Attempt(BaseModel):
    """One earlier reviewer of this assignment and how their turn ended."""

    assignment_id: str
    reviewer_id: str
    outcome: Literal["declined", "timed_out", "escalated"]
    reason: str
    at: datetime


class Assignment(BaseModel):
    """One needed subspecialty of one case: who reviews it, why, and its clock."""

    model_config = ConfigDict(extra="ignore")
    slot_id: str
    case_id: str
    tenant_id: str
    subspecialty: str
    routing: RoutingContext
    # withdrawn: the case no longer needs the subspecialty (case.rerouted) and no
    # reviewer had accepted it; kept, with its reason, as the record of the change.
    state: Literal["offered", "accepted", "reported", "unassignable", "withdrawn"]
    attempt: int = 0
    assignment_id: str = ""
    reviewer_id: str | None = None
    reason: str = ""
    excluded: dict[str, str] = {}
    history: list[Attempt] = []
    offered_at: datetime | None = None
    # When a reviewer was last sought for it: unassignable assignments are
    # re-offered least recently tried first, so none keeps its place for ever.
    tried_at: datetime | None = None
    accept_by: datetime | None = None
    accepted_at: datetime | None = None
    clock: ReviewClock
    due_at: datetime | None = None
    fired: list[str] = []
    next_fire_at: datetime | None = None
    reported_at: datetime | None = None
    turnaround_hours: float | None = None
    traceparent: str = ""
    # The case's studies in the review PACS viewer (records.complete's images).
    images: list[ImageLink] = []


def slot_id_for(case_id: str, subspecialty: str) -> str:
    return f"{case_id}:{subspecialty}"


def assignment_id_for(case_id: str, subspecialty: str, attempt: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{case_id}/{subspecialty}/{attempt}"))


@dataclass
class Pool:
    """What matching needs to know about the world right now."""

    roster: list[Reviewer]
    load: dict[str, int]
    busy_on_case: dict[str, str] = field(default_factory=dict)  # reviewer → other subspecialty


def _history_exclusions(a: Assignment, pool: Pool) -> dict[str, str]:
    why = {h.reviewer_id: f"{h.outcome.replace('_', ' ')} this case earlier" for h in a.history}
    for rid, other in pool.busy_on_case.items():
        why.setdefault(rid, f"already reviewing {other} on this case")
    return why


def _offer(
    a: Assignment, now: datetime, policy: SlaPolicy, pool: Pool, to: str | None = None
) -> list[Event]:
    """Choose a reviewer for `a` (mutated) and say so; or mark it unassignable.
    `to`: only that reviewer is considered (an operator named them)."""
    roster = [r for r in pool.roster if to is None or r.reviewer_id == to]
    d = choose_reviewer(a.subspecialty, a.routing, roster, pool.load, _history_exclusions(a, pool))
    a.reason, a.excluded, a.accepted_at, a.tried_at = d.reason, d.excluded, None, now
    if d.reviewer is None:
        a.state, a.reviewer_id, a.assignment_id, a.offered_at, a.accept_by = (
            "unassignable",
            None,
            "",
            None,
            None,
        )
        return [
            CaseUnassignable(
                case_id=a.case_id,
                tenant_id=a.tenant_id,
                subspecialty=a.subspecialty,
                reason=d.reason,
                excluded=d.excluded,
            )
        ]
    rid = d.reviewer.reviewer_id
    pool.load[rid] = pool.load.get(rid, 0) + 1
    a.state, a.reviewer_id, a.offered_at = "offered", rid, now
    a.assignment_id = assignment_id_for(a.case_id, a.subspecialty, a.attempt)
    accept_window = policy.acceptance_hours * 3600
    a.accept_by = policy.reviewer_calendar(d.reviewer).add(now, accept_window)
    cal = policy.calendar_for(a.clock)
    return [
        CaseAssigned(
            case_id=a.case_id,
            tenant_id=a.tenant_id,
            assignment_id=a.assignment_id,
            reviewer_id=rid,
            subspecialty=a.subspecialty,
            due_at=projected_deadline(a.clock, cal, now),
            reason=d.reason,
            reviewer_name=d.reviewer.name,
            reviewer_credentials=d.reviewer.credentials,
            reviewer_npi=d.reviewer.npi,
            # choose_reviewer only picks a reviewer licensed where the patient is.
            reviewer_licence_jurisdiction=a.routing.jurisdiction,
            images=a.images,
        )
    ]


def open_assignment(
    case_id: str,
    tenant_id: str,
    routing: RoutingContext,
    subspecialty: str,
    now: datetime,
    policy: SlaPolicy,
    pool: Pool,
    images: Sequence[ImageLink] = (),
) -> tuple[Assignment, list[Event]]:
    """A new assignment for one subspecialty of a case whose records are complete:
    the review clock starts now. `images`: the case's studies in the review PACS
    viewer, which the offer (case.assigned) carries to the reviewer."""
    a = Assignment(
        slot_id=slot_id_for(case_id, subspecialty),
        case_id=case_id,
        tenant_id=tenant_id,
        subspecialty=subspecialty,
        routing=routing,
        state="unassignable",
        clock=start_clock(routing, now, policy),
        images=list(images),
    )
    events = _offer(a, now, policy, pool)
    return settle(a, policy), events


def reassign(
    a: Assignment,
    now: datetime,
    policy: SlaPolicy,
    pool: Pool,
    outcome: Literal["declined", "timed_out", "escalated"],
    reason: str,
    to: str | None = None,
) -> tuple[Assignment, list[Event]]:
    """Hand the assignment to the next eligible reviewer (or leave it unassignable);
    `to`: to that reviewer only (checked eligible by `reassign_by_operator`)."""
    a = a.model_copy(deep=True)
    previous = a.reviewer_id
    if previous and a.state in ACTIVE_STATES:
        a.history.append(
            Attempt(
                assignment_id=a.assignment_id,
                reviewer_id=previous,
                outcome=outcome,
                reason=reason,
                at=now,
            )
        )
        pool.load[previous] = max(0, pool.load.get(previous, 0) - 1)
    old_id = a.assignment_id
    a.attempt += 1
    events = _offer(a, now, policy, pool, to)
    moved = CaseReassigned(
        case_id=a.case_id,
        tenant_id=a.tenant_id,
        assignment_id=old_id,
        from_reviewer_id=previous or "",
        to_reviewer_id=a.reviewer_id or "",
        reason=reason,
    )
    return settle(a, policy), [moved, *events]


class NotEligible(ValueError):
    """An operator asked for something the assignment's rules forbid (the reason)."""


def why_not(a: Assignment, reviewer_id: str, pool: Pool) -> str | None:
    """Why `reviewer_id` may not take assignment `a` now (None: eligible). The same
    rules as matching (`_exclusion`), plus the case's own history; the reviewer who
    has it now gives it up, so their own place does not count."""
    if a.reviewer_id == reviewer_id and a.state in ACTIVE_STATES:
        return "already has this assignment"
    reviewer = next((r for r in pool.roster if r.reviewer_id == reviewer_id), None)
    if reviewer is None:
        return "not on the roster"
    history = _history_exclusions(a, pool).get(reviewer_id)
    return history or _exclusion(reviewer, a.subspecialty, a.routing, pool.load.get(reviewer_id, 0))


def reassign_by_operator(
    a: Assignment,
    now: datetime,
    policy: SlaPolicy,
    pool: Pool,
    reason: str,
    by: str,
    to: str | None = None,
) -> tuple[Assignment, list[Event]]:
    """Operations hand an open assignment on, with their reason: to a reviewer they
    name (who must be eligible: `NotEligible` says why not) or to the next eligible
    one. The reviewer who had it is recorded as escalated and not offered it again."""
    if a.state not in OPEN_STATES:
        raise NotEligible(f"the assignment is {a.state}")
    if to is not None and (why := why_not(a, to, pool)):
        raise NotEligible(f"{to}: {why}")
    return reassign(a, now, policy, pool, "escalated", f"{by}: {reason}", to)


def open_subspecialties(pool: Pool) -> set[str]:
    """The subspecialties some active reviewer could take one more assignment of:
    waiting assignments of any other cannot be offered now, and are not tried."""
    return {
        s
        for r in pool.roster
        if r.active and pool.load.get(r.reviewer_id, 0) < r.capacity
        for s in r.subspecialties
    }


def retry_unassignable(
    a: Assignment, now: datetime, policy: SlaPolicy, pool: Pool
) -> tuple[Assignment, list[Event]]:
    """Offer an unassignable assignment again (capacity was freed, the roster
    changed). No event unless a reviewer is found: the alert was raised once.
    Still unassignable, it records the try (`tried_at`, the current reasons), so
    the next pass takes the assignments waiting longest since their last try."""
    if a.state != "unassignable":
        return a, []
    retried = a.model_copy(deep=True)
    events = _offer(retried, now, policy, pool)
    if retried.state == "unassignable":
        return settle(retried, policy), []
    return settle(retried, policy), events


def accept(a: Assignment, now: datetime, policy: SlaPolicy) -> Assignment:
    a = a.model_copy(update={"state": "accepted", "accepted_at": now, "accept_by": None})
    return settle(a, policy)


def close(a: Assignment, now: datetime, policy: SlaPolicy) -> Assignment:
    """The report is in: stop the clock; turnaround is wall-clock from records complete."""
    clock = stop_clock(a.clock, policy.calendar_for(a.clock), now)
    hours = (now - a.clock.started_at).total_seconds() / 3600
    a = a.model_copy(
        update={
            "state": "reported",
            "clock": clock,
            "reported_at": now,
            "turnaround_hours": round(hours, 3),
            "accept_by": None,
        }
    )
    return settle(a, policy)


def pause(
    a: Assignment, now: datetime, policy: SlaPolicy, kind: str, reason: str, by: str
) -> Assignment:
    clock = pause_clock(a.clock, policy.calendar_for(a.clock), now, kind, reason, by)
    return settle(a.model_copy(update={"clock": clock}), policy)


def resume(a: Assignment, now: datetime, policy: SlaPolicy, kind: str, by: str) -> Assignment:
    return settle(a.model_copy(update={"clock": resume_clock(a.clock, now, kind, by)}), policy)


# ---------------------------------------------------------------- timers


class Timer(BaseModel):
    key: str
    kind: Literal["acceptance", "warning", "breach", "escalation"]
    at: datetime
    fraction: float = 0.0
    level: int = 0


def pending_timers(a: Assignment, policy: SlaPolicy) -> list[Timer]:
    """Every timer of `a` still to fire, earliest first (none once reported or withdrawn)."""
    if a.state in ("reported", "withdrawn"):
        return []
    timers: list[Timer] = []
    if a.state == "offered" and a.accept_by:
        timers.append(Timer(key=f"accept:{a.assignment_id}", kind="acceptance", at=a.accept_by))
    cal = policy.calendar_for(a.clock)
    due = deadline(a.clock, cal)
    if due is not None:
        for f in policy.warning_fractions:
            at = when_fraction_reached(a.clock, cal, f)
            if at is not None and f"warning:{f:g}" not in a.fired:
                timers.append(Timer(key=f"warning:{f:g}", kind="warning", at=at, fraction=f))
        if "breach" not in a.fired:
            timers.append(Timer(key="breach", kind="breach", at=due))
        for level, step in enumerate(policy.escalation, start=1):
            if f"escalation:{level}" not in a.fired:
                at = cal.add(due, step.after_hours * 3600)
                timers.append(
                    Timer(key=f"escalation:{level}", kind="escalation", at=at, level=level)
                )
    return sorted(timers, key=lambda t: (t.at, t.kind != "acceptance"))


def settle(a: Assignment, policy: SlaPolicy) -> Assignment:
    """Recompute the derived fields (deadline, next timer) after any change."""
    timers = pending_timers(a, policy)
    due = deadline(a.clock, policy.calendar_for(a.clock))
    return a.model_copy(update={"due_at": due, "next_fire_at": timers[0].at if timers else None})


def fire_due(
    a: Assignment, now: datetime, policy: SlaPolicy, pool: Pool
) -> tuple[Assignment, list[Event]]:
    """Fire every timer of `a` due at `now`, in order; each key fires once."""
    events: list[Event] = []
    for _ in range(50):  # bound: a handful of timers per assignment
        timers = [t for t in pending_timers(a, policy) if t.at <= now]
        if not timers:
            break
        a, fired = _fire(
            a.model_copy(update={"fired": [*a.fired, timers[0].key]}), timers[0], now, policy, pool
        )
        events += fired
    return settle(a, policy), events


def _fire(
    a: Assignment, t: Timer, now: datetime, policy: SlaPolicy, pool: Pool
) -> tuple[Assignment, list[Event]]:
    common = {"case_id": a.case_id, "tenant_id": a.tenant_id}
    due = deadline(a.clock, policy.calendar_for(a.clock))
    if t.kind == "acceptance":
        return reassign(a, now, policy, pool, "timed_out", "no answer within the acceptance window")
    if t.kind == "warning":
        if due is not None and due <= now:
            return a, []  # caught up after the deadline: the breach says more
        return a, [
            SlaWarning(
                **common,
                assignment_id=a.assignment_id,
                due_at=due or now,
                fraction_elapsed=t.fraction,
            )
        ]
    breach = SlaBreached(
        **common, assignment_id=a.assignment_id, due_at=due or now, escalation_level=t.level
    )
    step = policy.escalation[t.level - 1] if t.kind == "escalation" else None
    if step is not None and step.action == "reassign" and a.state in OPEN_STATES:
        a, moved = reassign(
            a, now, policy, pool, "escalated", f"SLA breached: escalation level {t.level}"
        )
        return a, [breach, *moved]
    return a, [breach]


def sla_status(a: Assignment, policy: SlaPolicy, now: datetime) -> str:
    """on_track / at_risk / breached / paused / done, for the dashboard."""
    if a.state == "reported":
        return "done"
    cal = policy.calendar_for(a.clock)
    if "breach" in a.fired or (a.due_at is not None and a.due_at <= now):
        return "breached"
    if a.clock.running_since is None:
        return "paused"
    if elapsed(a.clock, cal, now) >= policy.at_risk_fraction * a.clock.budget_seconds:
        return "at_risk"
    return "on_track"


# ---------------------------------------------------------------- the case rerouted


WITHDRAWABLE = ("offered", "unassignable")  # no reviewer has taken it on


@dataclass(frozen=True)
class ReroutePlan:
    """What a new routing changes in a case's assignments: the subspecialties to open
    (or open again, if withdrawn earlier), the slots to withdraw, and those kept
    although no longer needed because a reviewer has accepted (or reported) them."""

    open: list[str]
    withdraw: list[str]
    kept: list[str]


def reroute_plan(routing: RoutingContext, slots: dict[str, Assignment]) -> ReroutePlan:
    """Against the case's slots (subspecialty -> assignment), what the new routing
    changes. A reviewer who accepted keeps the work: only unaccepted slots go."""
    needed = needed_subspecialties(routing)
    gone = [sub for sub in slots if sub not in needed]
    return ReroutePlan(
        open=[sub for sub in needed if sub not in slots or slots[sub].state == "withdrawn"],
        withdraw=[sub for sub in gone if slots[sub].state in WITHDRAWABLE],
        kept=[sub for sub in gone if slots[sub].state in ("accepted", "reported")],
    )


def withdraw(
    a: Assignment, now: datetime, policy: SlaPolicy, reason: str
) -> tuple[Assignment, list[Event]]:
    """The case no longer needs this subspecialty: an unaccepted assignment is
    withdrawn (its clock stops, its reviewer's offer is taken back with
    case.reassigned `withdrawn`); an accepted or reported one is left as it is."""
    if a.state not in WITHDRAWABLE:
        return a, []
    previous = a.reviewer_id if a.state == "offered" else None
    clock = stop_clock(a.clock, policy.calendar_for(a.clock), now)
    done = a.model_copy(
        update={
            "state": "withdrawn",
            "reason": f"withdrawn: {reason}",
            "clock": clock,
            "accept_by": None,
            "reviewer_id": None,
        }
    )
    events: list[Event] = []
    if previous:
        events.append(
            CaseReassigned(
                case_id=a.case_id,
                tenant_id=a.tenant_id,
                assignment_id=a.assignment_id,
                from_reviewer_id=previous,
                reason=f"withdrawn: {reason}",
                withdrawn=True,
            )
        )
    return settle(done, policy), events


def reopen(
    a: Assignment, routing: RoutingContext, now: datetime, policy: SlaPolicy, pool: Pool
) -> tuple[Assignment, list[Event]]:
    """A withdrawn subspecialty needed again: offered anew, its clock starting now."""
    if a.state != "withdrawn":
        return a, []
    fresh = a.model_copy(
        update={
            "state": "unassignable",
            "routing": routing,
            "attempt": a.attempt + 1,
            "clock": start_clock(routing, now, policy),
            "fired": [],
            "reason": "",
        },
        deep=True,
    )
    events = _offer(fresh, now, policy, pool)
    return settle(fresh, policy), events

"""assignment's handlers: message or request in → domain → store → events out.

Records complete → one assignment per needed subspecialty (reviewer chosen,
clock started, case.assigned or case.unassignable in the outbox). Case rerouted
(intake re-checked the routing with the images) → a newly needed subspecialty
is opened, an unaccepted one no longer needed withdrawn. Records
incomplete / consent → the clock pauses with the reason; records complete again
→ it resumes. The reviewer accepts or declines; a decline reassigns. The timer
loop fires what is due. A submitted report closes the assignment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Literal

from services.assignment import domain
from services.assignment.domain import Assignment, Pool, SlaPolicy
from services.assignment.store import AssignmentStore
from shared.aio import gather_all
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import Conflict, NotFound, RetryableError
from shared.events import (
    CaseRerouted,
    Event,
    RecordsComplete,
    RecordsIncomplete,
    ReportSubmitted,
    RoutingContext,
)
from shared.store import REDELIVERIES_SKIPPED
from shared.telemetry import current_traceparent

Change = Callable[[Assignment], tuple[Assignment, list[Event]]]
SAVE_ATTEMPTS = 5
# Waiting assignments one re-offer pass tries at most (settings.reoffer_batch).
REOFFER_BATCH = 20


def _wrap(events: Sequence[Event], traceparent: str) -> list[OutboxEntry]:
    return [outbox_entry(e, traceparent=traceparent) for e in events]


async def mutate(
    store: AssignmentStore, slot_id: str, event_id: str | None, change: Change
) -> tuple[Assignment | None, list[OutboxEntry]]:
    """Apply `change` to the stored assignment once, with optimistic concurrency;
    (None, []) if it does not exist or `event_id` was applied already."""
    for _ in range(SAVE_ATTEMPTS):
        loaded = await store.load(slot_id)
        if loaded is None:
            return None, []
        current, version, applied = loaded
        if event_id and event_id in applied:
            REDELIVERIES_SKIPPED.inc()
            return current, []
        updated, events = change(current)
        outbox = _wrap(events, current.traceparent or current_traceparent())
        if await store.save(updated, version, outbox, event_id):
            return updated, outbox
    raise RetryableError(f"assignment {slot_id} kept changing; try again")


async def _pool(store: AssignmentStore, case_id: str, slot_id: str) -> Pool:
    return Pool(
        await store.roster(), await store.active_load(), await store.busy_on_case(case_id, slot_id)
    )


# ---------------------------------------------------------------- events in


async def assign_case(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    event: RecordsComplete,
    meta: EventMeta,
) -> list[OutboxEntry]:
    """Open an assignment per needed subspecialty; for those already open (records
    were re-requested after assignment) the completion resumes the clock."""
    # The routing re-checked with the images (case.rerouted) if it came first.
    routing, outbox = await store.route(event.case_id) or event.routing, []
    slots = {s: domain.slot_id_for(event.case_id, s) for s in domain.needed_subspecialties(routing)}
    existing = await _existing(store, list(slots.values()))
    # The roster and the reviewers' load only when a slot is to be opened: a
    # redelivered records.complete (every slot open already) must not cost the
    # load's read, which grows with the work in flight.
    missing = set(slots.values()) - existing
    roster, load = (
        await asyncio.gather(store.roster(), store.active_load()) if missing else ([], {})
    )
    pool = Pool(roster, load)
    for subspecialty, slot in slots.items():
        if slot in existing:
            resumed = await _resume(store, policy, now, slot, "records", "records complete", meta)
            outbox += resumed
            continue
        a, events = domain.open_assignment(
            event.case_id, event.tenant_id, routing, subspecialty, now, policy, pool, event.images
        )
        a.traceparent = current_traceparent()
        entries = _wrap(events, a.traceparent)
        if await store.insert(a, meta.event_id, entries):
            outbox += entries
        if a.reviewer_id:
            pool.busy_on_case[a.reviewer_id] = subspecialty
    # A case.rerouted handled while these slots were being opened saw none of them:
    # follow the kept routing now (a no-op when it is the one just used).
    return outbox + await follow_route(store, policy, now, event.case_id, meta.event_id)


async def reroute_case(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    event: CaseRerouted,
    meta: EventMeta,
) -> list[OutboxEntry]:
    """Intake re-checked the case with its images and the reviewers needed changed:
    the routing is kept (records.complete may still be on its way), and the case's
    slots follow it: a newly needed subspecialty is opened, an unaccepted one no
    longer needed is withdrawn, an accepted one stays with its reviewer."""
    await store.save_route(event.case_id, event.routing, event.rerouted_at)
    return await follow_route(store, policy, now, event.case_id, meta.event_id, event.removed)


async def follow_route(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    case_id: str,
    event_id: str,
    why_removed: dict[str, str] | None = None,
) -> list[OutboxEntry]:
    """Bring the case's slots in line with its kept routing (idempotent)."""
    routing = await store.route(case_id)
    if routing is None:
        return []
    slots = {a.subspecialty: a for a in await store.find({"case_id": case_id})}
    if not slots:
        return []  # records not complete yet: assign_case opens them by this routing
    plan = domain.reroute_plan(routing, slots)
    outbox: list[OutboxEntry] = []
    for sub in plan.withdraw:
        why = (why_removed or {}).get(sub) or "the case no longer needs it (case.rerouted)"
        _, entries = await mutate(
            store,
            slots[sub].slot_id,
            event_id,
            _withdrawing(now, policy, why),
        )
        outbox += entries
    for sub in plan.open:
        slot = domain.slot_id_for(case_id, sub)
        pool = await _pool(store, case_id, slot)
        if sub in slots:  # withdrawn earlier, needed again
            _, entries = await mutate(store, slot, event_id, _reopening(routing, now, policy, pool))
            outbox += entries
            continue
        # A subspecialty the images brought in: the same studies as the case's others.
        images = next((s.images for s in slots.values() if s.images), [])
        a, events = domain.open_assignment(
            case_id, routing_tenant(slots), routing, sub, now, policy, pool, images
        )
        a.traceparent = current_traceparent()
        entries = _wrap(events, a.traceparent)
        if await store.insert(a, event_id, entries):
            outbox += entries
    return outbox


def _withdrawing(now: datetime, policy: SlaPolicy, why: str) -> Change:
    return lambda a: domain.withdraw(a, now, policy, why)


def _reopening(routing: RoutingContext, now: datetime, policy: SlaPolicy, pool: Pool) -> Change:
    return lambda a: domain.reopen(a, routing, now, policy, pool)


def routing_tenant(slots: dict[str, Assignment]) -> str:
    return next(iter(slots.values())).tenant_id


async def _existing(store: AssignmentStore, slots: list[str]) -> set[str]:
    """Which of these slots are already open (the records were re-requested)."""
    found = await gather_all(*(store.load(slot) for slot in slots))
    return {slot for slot, doc in zip(slots, found, strict=True) if doc is not None}


async def _resume(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    slot: str,
    kind: str,
    by: str,
    meta: EventMeta | None,
) -> list[OutboxEntry]:
    _, outbox = await mutate(
        store,
        slot,
        meta.event_id if meta else None,
        lambda a: (domain.resume(a, now, policy, kind, by), []),
    )
    return outbox


async def records_incomplete(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    event: RecordsIncomplete,
    meta: EventMeta,
) -> None:
    """Records are re-requested after assignment: the review cannot go on, so the
    clock pauses (before assignment the clock has not started: nothing to do)."""
    kinds = ", ".join(sorted({m.kind.value for m in event.missing})) or "records"
    reason = f"waiting on records ({kinds}); attempt {event.attempt}"
    if event.gave_up:
        reason = f"records missing ({kinds}); retrieval gave up"
    for slot in await store.slot_ids_of_case(event.case_id):
        await mutate(
            store,
            slot,
            meta.event_id,
            lambda a: (domain.pause(a, now, policy, "records", reason, "records_fetch"), []),
        )


async def close_assignment(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    event: ReportSubmitted,
    meta: EventMeta,
    *,
    reoffer_batch: int = REOFFER_BATCH,
) -> list[OutboxEntry]:
    """The report is in: stop the clock and free the reviewer's capacity, which
    goes to the waiting assignments."""
    slot = await store.slot_of_assignment(event.assignment_id) if event.assignment_id else None
    slots = [slot] if slot else []
    if not slots:  # an older reporting service that does not send assignment ids
        slots = [
            a.slot_id
            for a in await store.find({"case_id": event.case_id})
            if a.reviewer_id == event.reviewer_id
        ]
    freed: set[str] = set()  # slots this delivery closed (none for a redelivery)

    def closing(a: Assignment) -> tuple[Assignment, list[Event]]:
        if a.state in domain.ACTIVE_STATES:
            freed.add(a.slot_id)
        return domain.close(a, now, policy), []

    for s in slots:
        await mutate(store, s, meta.event_id, closing)
    # Only capacity this delivery freed goes to the waiting ones: a redelivered
    # report.submitted must not cost a re-offer pass (the roster and the load).
    return await reoffer_waiting(store, policy, now, reoffer_batch) if freed else []


async def reoffer_waiting(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    batch: int = REOFFER_BATCH,
    subspecialties: Iterable[str] | None = None,
) -> list[OutboxEntry]:
    """Capacity was freed or the roster changed (or the timer loop's periodic pass):
    offer waiting (unassignable) assignments again, at most `batch` of them, of the
    subspecialties some reviewer has room for (and, for a roster change, of those
    of the reviewers changed), those tried least recently first. A failed try
    moves one to the back of the queue, so cases no reviewer can take do not hold
    the places of cases that only waited for capacity, and every waiting case is
    tried within a few passes."""
    if not await store.any_waiting():  # the common case: nothing waits, nothing to read
        return []
    roster, load = await asyncio.gather(store.roster(), store.active_load())
    room = domain.open_subspecialties(Pool(roster, load))
    if subspecialties is not None:
        room &= set(subspecialties)
    if not room:
        return []
    outbox: list[OutboxEntry] = []
    for waiting in await store.least_recently_tried(sorted(room), batch):
        if waiting.subspecialty not in domain.open_subspecialties(Pool(roster, load)):
            continue  # filled during this pass: it keeps its place in the queue
        busy = await store.busy_on_case(waiting.case_id, waiting.slot_id)
        pool = Pool(roster, load, busy)
        _, entries = await mutate(store, waiting.slot_id, None, _retrying(now, policy, pool))
        outbox += entries
    return outbox


# ---------------------------------------------------------------- requests in


def _holder(a: Assignment, assignment_id: str) -> str | None:
    """The reviewer `assignment_id` was offered to: the current one, or an earlier one."""
    if a.assignment_id == assignment_id:
        return a.reviewer_id
    return next((h.reviewer_id for h in a.history if h.assignment_id == assignment_id), None)


async def _own_assignment(store: AssignmentStore, assignment_id: str, reviewer_id: str) -> str:
    """The slot of the caller's assignment. Someone else's answers exactly as a
    missing one (404, same body): a reviewer must not learn that another
    reviewer's assignment exists (issue 15, finding 8)."""
    slot = await store.slot_of_assignment(assignment_id)
    loaded = await store.load(slot) if slot else None
    if loaded is None or _holder(loaded[0], assignment_id) != reviewer_id:
        raise NotFound(f"no assignment {assignment_id}")
    a = loaded[0]
    if a.assignment_id != assignment_id:
        raise Conflict("this assignment has been handed to another reviewer")
    return a.slot_id


async def respond(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    assignment_id: str,
    reviewer_id: str,
    answer: Literal["accept", "decline"],
    reason: str = "",
    *,
    reoffer_batch: int = REOFFER_BATCH,
) -> tuple[Assignment, list[OutboxEntry]]:
    """The reviewer accepts or declines an offered assignment. A decline frees the
    reviewer's capacity, which goes to the waiting assignments."""
    slot = await _own_assignment(store, assignment_id, reviewer_id)

    def change(a: Assignment) -> tuple[Assignment, list[Event]]:
        if a.assignment_id != assignment_id:
            raise Conflict("this assignment has been handed to another reviewer")
        if a.state == "reported":
            raise Conflict("the report for this assignment is already in")
        if answer == "accept":
            return (domain.accept(a, now, policy) if a.state == "offered" else a), []
        why = f"declined by the reviewer: {reason}" if reason else "declined by the reviewer"
        return domain.reassign(a, now, policy, pool, "declined", why)

    pool = await _pool(store, slot.rsplit(":", 1)[0], slot)
    a, outbox = await mutate(store, slot, None, change)
    assert a is not None
    if answer == "decline":
        outbox += await reoffer_waiting(store, policy, now, reoffer_batch)
    return a, outbox


async def pause_case(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    case_id: str,
    kind: str,
    reason: str,
    by: str,
    resume: bool = False,
) -> list[Assignment]:
    """Operations pause (or resume) the clock of every open assignment of a case."""
    slots = await store.slot_ids_of_case(case_id)
    if not slots:
        raise NotFound(f"no assignment for case {case_id}")
    changed = []
    for slot in slots:
        if resume:
            a, _ = await mutate(
                store, slot, None, lambda a: (domain.resume(a, now, policy, kind, by), [])
            )
        else:
            a, _ = await mutate(
                store, slot, None, lambda a: (domain.pause(a, now, policy, kind, reason, by), [])
            )
        if a is not None:
            changed.append(a)
    return changed


async def reassign_by_operations(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    slot: str,
    reason: str,
    by: str,
    *,
    to: str | None = None,
    reoffer_batch: int = REOFFER_BATCH,
) -> tuple[Assignment, list[OutboxEntry]]:
    """Operations hand an assignment on (to `to`, who must be eligible, or to the
    next eligible reviewer); the previous reviewer's capacity goes to the waiting
    assignments."""
    pool = await _pool(store, slot.rsplit(":", 1)[0], slot)

    def change(a: Assignment) -> tuple[Assignment, list[Event]]:
        if a.state == "reported":
            raise Conflict("the report for this assignment is already in")
        try:
            return domain.reassign_by_operator(a, now, policy, pool, reason, by, to)
        except domain.NotEligible as exc:
            raise Conflict(str(exc)) from exc

    a, outbox = await mutate(store, slot, None, change)
    if a is None:
        raise NotFound(f"no assignment {slot}")
    return a, outbox + await reoffer_waiting(store, policy, now, reoffer_batch)


# ---------------------------------------------------------------- timers


def _retrying(now: datetime, policy: SlaPolicy, pool: Pool) -> Change:
    return lambda a: domain.retry_unassignable(a, now, policy, pool)


def _firing(now: datetime, policy: SlaPolicy, pool: Pool) -> Change:
    return lambda a: domain.fire_due(a, now, policy, pool)


async def fire_timers(
    store: AssignmentStore,
    policy: SlaPolicy,
    now: datetime,
    *,
    reoffer_batch: int = REOFFER_BATCH,
) -> list[OutboxEntry]:
    """One pass of the timer loop: fire every due timer once, then re-offer a batch
    of waiting assignments (an expired offer freed capacity; and the periodic pass
    reaches, in turn, every waiting assignment no event re-offered). Firing is the
    conditional write of the new state and its events (store.save): two loops, or
    a restart, cannot fire one twice."""
    outbox: list[OutboxEntry] = []
    for slot in await store.due(now):
        pool = await _pool(store, slot.rsplit(":", 1)[0], slot)
        _, entries = await mutate(store, slot, None, _firing(now, policy, pool))
        outbox += entries
    return outbox + await reoffer_waiting(store, policy, now, reoffer_batch)

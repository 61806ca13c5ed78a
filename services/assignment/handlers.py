"""assignment's handlers: records complete → choose a reviewer → the assignment
stored with case.assigned in the outbox; a submitted report closes it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.assignment import domain
from services.assignment.settings import AssignmentSettings
from services.assignment.store import AssignmentStore
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.events import CaseAssigned, RecordsComplete, ReportSubmitted
from shared.store import Doc, apply_once
from shared.telemetry import current_traceparent


def _assignment_update(event: RecordsComplete, decision: domain.Decision, due: datetime) -> Doc:
    now = datetime.now(UTC)
    state = "assigned" if decision.reviewer else "unassignable"
    return {
        "$set": {
            "tenant_id": event.tenant_id,
            "subspecialty": decision.subspecialty,
            "reviewer_id": decision.reviewer.reviewer_id if decision.reviewer else None,
            "state": state,
            "reason": decision.reason,
            "excluded": decision.excluded,
            "routing": event.routing.model_dump(mode="json"),
            "clock_started_at": now,
            "due_at": due,
            "updated_at": now,
        }
    }


async def assign_case(
    store: AssignmentStore, settings: AssignmentSettings, event: RecordsComplete, meta: EventMeta
) -> list[OutboxEntry]:
    """Assign the case's primary subspecialty (multi-reviewer cases: issue #5)."""
    subspecialty = event.routing.subspecialties[0]
    decision = domain.choose_reviewer(
        subspecialty, event.routing, await store.roster(), await store.active_load()
    )
    hours = settings.tier_hours.get(event.routing.service_tier.value, 120)
    due = domain.review_deadline(
        datetime.now(UTC), hours, event.routing.urgency, settings.urgent_factor
    )
    outbox: list[OutboxEntry] = []
    if decision.reviewer:
        assigned = CaseAssigned(
            case_id=event.case_id,
            tenant_id=event.tenant_id,
            assignment_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.case_id}/{subspecialty}/0")),
            reviewer_id=decision.reviewer.reviewer_id,
            subspecialty=subspecialty,
            due_at=due,
            reason=decision.reason,
        )
        outbox.append(outbox_entry(assigned, traceparent=current_traceparent()))
    update = _assignment_update(event, decision, due)
    applied = await apply_once(store.assignments, event.case_id, meta.event_id, update, outbox)
    return outbox if applied else []


async def close_assignment(store: AssignmentStore, event: ReportSubmitted, meta: EventMeta) -> None:
    """The report is in: stop the clock and free the reviewer's capacity."""
    now = datetime.now(UTC)
    await apply_once(
        store.assignments,
        event.case_id,
        meta.event_id,
        {"$set": {"state": "reported", "reported_at": now, "updated_at": now}},
        upsert=False,
    )

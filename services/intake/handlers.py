"""Intake's handlers: a submission in → domain rules → the case stored with its
first event in the outbox. Used by both the HTTP API and the Kafka subscriber."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from services.intake import domain
from services.intake.store import IntakeStore
from shared.envelope import OutboxEntry, outbox_entry
from shared.errors import Conflict
from shared.events import CaseAccepted, CaseRejected, CaseSubmission, FieldError
from shared.telemetry import current_traceparent


@dataclass(frozen=True)
class SubmitResult:
    case_id: str
    stage: str
    created: bool
    outbox: list[OutboxEntry]


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    return [
        FieldError(loc=prefix + ".".join(str(p) for p in e["loc"]), msg=e["msg"], type=e["type"])
        for e in exc.errors(include_input=False, include_url=False)
    ]


def _new_case(
    tenant_id: str, submission: CaseSubmission
) -> tuple[dict[str, Any], list[OutboxEntry]]:
    case_id = domain.case_id_for(tenant_id, submission.external_id)
    subs = domain.infer_subspecialties(
        f"{submission.question}\n{submission.first_opinion.report_text}"
    )
    waiting_on = domain.missing_authorizations(submission)
    stage = "awaiting_authorization" if waiting_on else "accepted"
    now = datetime.now(UTC)
    doc = {
        "_id": case_id,
        "tenant_id": tenant_id,
        "external_id": submission.external_id,
        "fingerprint": domain.submission_fingerprint(submission),
        "submission": submission.model_dump(mode="json"),
        "subspecialties": [{"name": f.name, "reason": f.reason} for f in subs],
        "waiting_on_authorization": waiting_on,
        "stage": stage,
        "stage_rank": domain.stage_rank(stage),
        "history": [{"stage": stage, "at": now}],
        "created_at": now,
        "updated_at": now,
    }
    outbox: list[OutboxEntry] = []
    if not waiting_on:
        accepted = CaseAccepted(
            case_id=case_id,
            tenant_id=tenant_id,
            external_id=submission.external_id,
            routing=domain.routing_for(submission, [f.name for f in subs]),
            records=submission.records,
        )
        outbox.append(outbox_entry(accepted, traceparent=current_traceparent()))
    return doc, outbox


async def submit_case(
    store: IntakeStore, tenant_id: str, submission: CaseSubmission
) -> SubmitResult:
    """Create the case once; a resubmission returns it, a changed one is a conflict."""
    doc, outbox = _new_case(tenant_id, submission)
    if await store.insert_case(doc, outbox):
        return SubmitResult(doc["_id"], doc["stage"], True, outbox)
    existing = await store.get(doc["_id"])
    if existing is None:  # pragma: no cover - inserted and vanished: treat as transient
        raise Conflict("case is being created concurrently; retry")
    if existing["fingerprint"] != doc["fingerprint"]:
        raise Conflict(
            f"external_id {submission.external_id!r} was already used for a different submission"
        )
    return SubmitResult(existing["_id"], existing["stage"], False, [])


async def reject_submission(
    store: IntakeStore, event_id: str, tenant_id: str, external_id: str, errors: list[FieldError]
) -> list[OutboxEntry]:
    """Record a refused Kafka submission and tell the integrator with case.rejected."""
    case_id = domain.case_id_for(tenant_id, external_id or event_id)
    rejected = CaseRejected(
        case_id=case_id, tenant_id=tenant_id, external_id=external_id or "", errors=errors
    )
    outbox = [outbox_entry(rejected, traceparent=current_traceparent())]
    doc = {
        "tenant_id": tenant_id,
        "external_id": external_id,
        "case_id": case_id,
        "errors": [e.model_dump() for e in errors],
        "at": datetime.now(UTC),
    }
    created = await store.record_rejection(f"event:{event_id}", doc, outbox)
    return outbox if created else []


async def record_stage(store: IntakeStore, case_id: str, event_id: str, stage: str) -> None:
    await store.advance_stage(case_id, event_id, stage, domain.stage_rank(stage))

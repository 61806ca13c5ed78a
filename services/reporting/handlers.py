"""reporting's handlers: learn assignments from case.assigned; turn a reviewer's
submitted opinion into a stored report with report.submitted and report.ready."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.reporting import domain
from services.reporting.store import ReportingStore
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import Conflict, Forbidden, NotFound
from shared.events import CaseAssigned, ReportLinks, ReportReady, ReportSubmitted
from shared.store import apply_once
from shared.telemetry import current_traceparent


async def record_assignment(store: ReportingStore, event: CaseAssigned, meta: EventMeta) -> None:
    """Remember who may report on the case, and the case's trace to continue it."""
    update = {
        "$set": {
            "tenant_id": event.tenant_id,
            "assignment_id": event.assignment_id,
            "reviewer_id": event.reviewer_id,
            "subspecialty": event.subspecialty,
            "due_at": event.due_at,
            "traceparent": current_traceparent(),
        },
        "$setOnInsert": {"reported": False},
    }
    await apply_once(store.assignments, event.case_id, meta.event_id, update)


def _report_document(
    case_id: str, assignment: dict[str, Any], reviewer_id: str, opinion: domain.Opinion
) -> dict[str, Any]:
    return {
        "report_id": domain.report_id_for(case_id, assignment["assignment_id"]),
        "case_id": case_id,
        "tenant_id": assignment["tenant_id"],
        "assignment_id": assignment["assignment_id"],
        "reviewer_id": reviewer_id,
        "subspecialty": assignment["subspecialty"],
        "opinion": opinion.model_dump(mode="json"),
        "signed_at": datetime.now(UTC).isoformat(),
    }


def _events(
    document: dict[str, Any], sha: str, base_url: str, traceparent: str
) -> list[OutboxEntry]:
    rid, common = (
        document["report_id"],
        {"case_id": document["case_id"], "tenant_id": document["tenant_id"]},
    )
    concordance = document["opinion"]["concordance"]
    submitted = ReportSubmitted(
        **common,
        report_id=rid,
        reviewer_id=document["reviewer_id"],
        assignment_id=document["assignment_id"],
        concordance=concordance,
    )
    ready = ReportReady(
        **common,
        report_id=rid,
        reviewer_id=document["reviewer_id"],
        concordance=concordance,
        signed_at=document["signed_at"],
        content_sha256=sha,
        links=ReportLinks(report=f"{base_url}/v1/reports/{rid}"),
    )
    return [
        outbox_entry(submitted, traceparent=traceparent),
        outbox_entry(ready, traceparent=traceparent),
    ]


async def submit_opinion(
    store: ReportingStore, case_id: str, reviewer_id: str, opinion: domain.Opinion, base_url: str
) -> tuple[str, list[OutboxEntry]]:
    """Store the assigned reviewer's opinion once; a report is never edited."""
    assignment = await store.assignment(case_id)
    if assignment is None:
        raise NotFound(f"no assignment for case {case_id}")
    if assignment["reviewer_id"] != reviewer_id:
        raise Forbidden("only the reviewer assigned to this case may submit its opinion")
    document = _report_document(case_id, assignment, reviewer_id, opinion)
    sha = domain.content_sha256(document)
    outbox = _events(document, sha, base_url, assignment.get("traceparent", ""))
    doc = {"_id": document["report_id"], "document": document, "content_sha256": sha}
    if not await store.insert_report(doc, outbox):
        raise Conflict("an opinion was already submitted for this assignment; use an addendum")
    await store.assignments.update_one({"_id": case_id}, {"$set": {"reported": True}})
    return document["report_id"], outbox

"""reporting's handlers: learn who may report from case.assigned / case.reassigned;
turn the assigned reviewer's opinion into a signed report (report.submitted +
report.ready, links only); append signed addenda (report.addendum)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.reporting import domain, signing
from services.reporting.keys import KeyRing
from services.reporting.store import ReportingStore
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import Conflict, Forbidden, NotFound
from shared.events import (
    CaseAssigned,
    CaseReassigned,
    ReportAddendum,
    ReportLinks,
    ReportReady,
    ReportSubmitted,
)
from shared.store import Doc, apply_once
from shared.telemetry import current_traceparent


@dataclass(frozen=True)
class Signer:
    """What signing needs: the key ring and where the report API is published."""

    keys: KeyRing
    base_url: str

    def links(self, report_id: str) -> ReportLinks:
        url = f"{self.base_url}/v1/reports/{report_id}"
        return ReportLinks(
            report=url, fhir=f"{url}/fhir", pdf=f"{url}/pdf", signature=f"{url}/signature"
        )

    def sign(self, document: dict[str, Any]) -> signing.Signature:
        owner = document["reviewer_id"]
        return signing.sign(document, owner, self.keys.private_key(owner))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- assignments


async def record_assignment(store: ReportingStore, event: CaseAssigned, meta: EventMeta) -> None:
    """Remember who may report on this assignment, and the case's trace to continue it.
    `received_at` orders assignments of one case (one partition, so arrival order)."""
    update = {
        "$set": {
            "case_id": event.case_id,
            "tenant_id": event.tenant_id,
            "reviewer_id": event.reviewer_id,
            "reviewer_name": event.reviewer_name,
            "reviewer_credentials": event.reviewer_credentials,
            "subspecialty": event.subspecialty,
            "due_at": event.due_at,
            "received_at": datetime.now(UTC),
            "traceparent": current_traceparent(),
        },
        "$setOnInsert": {"reported": False},
    }
    await apply_once(store.assignments, event.assignment_id, meta.event_id, update)


async def record_reassignment(store: ReportingStore, event: CaseReassigned) -> None:
    """The previous reviewer's open assignments on the case are withdrawn (setting a
    flag is idempotent, so a redelivery needs no guard)."""
    await store.assignments.update_many(
        {"case_id": event.case_id, "reviewer_id": event.from_reviewer_id, "reported": False},
        {"$set": {"withdrawn": True}},
    )


async def _is_current(store: ReportingStore, assignment: Doc) -> bool:
    if assignment.get("withdrawn"):
        return False
    latest = await store.latest_assignment_id(assignment["case_id"], assignment["subspecialty"])
    return latest == assignment["_id"]


async def open_assignments(store: ReportingStore, reviewer_id: str) -> list[Doc]:
    docs = await store.open_assignments(reviewer_id)
    return [d for d in docs if await _is_current(store, d)]


async def my_assignment(store: ReportingStore, assignment_id: str, reviewer_id: str) -> Doc:
    """The assignment, if this reviewer holds it now; else NotFound / Forbidden."""
    assignment = await store.assignment(assignment_id)
    if assignment is None or "case_id" not in assignment:
        raise NotFound(f"no assignment {assignment_id}")
    if assignment["reviewer_id"] != reviewer_id:
        raise Forbidden("only the reviewer assigned to this case may write its opinion")
    if not await _is_current(store, assignment):
        raise Forbidden("this assignment was reassigned; it is no longer yours to report")
    return assignment


async def assignment_for_case(store: ReportingStore, case_id: str, reviewer_id: str) -> str:
    """The reviewer's one open assignment on a case (the case-addressed route)."""
    docs = [d for d in await open_assignments(store, reviewer_id) if d["case_id"] == case_id]
    if len(docs) == 1:
        return str(docs[0]["_id"])
    if docs:
        raise Conflict("several open assignments on this case; submit per assignment id")
    done = await store.assignments.find_one(
        {"case_id": case_id, "reviewer_id": reviewer_id, "reported": True}
    )
    if done:
        raise Conflict("an opinion was already submitted for this assignment; use an addendum")
    raise Forbidden("only the reviewer assigned to this case may submit its opinion")


async def save_draft(
    store: ReportingStore, assignment_id: str, reviewer_id: str, draft: domain.OpinionDraft
) -> list[tuple[str, str]]:
    """Keep the reviewer's unfinished opinion; returns what is still missing."""
    assignment = await my_assignment(store, assignment_id, reviewer_id)
    if assignment.get("reported"):
        raise Conflict("the opinion was already submitted; use an addendum")
    await store.save_draft(assignment_id, draft.model_dump(mode="json"))
    return domain.opinion_gaps(draft, assignment["subspecialty"])


# ---------------------------------------------------------------- reports


def _report_events(
    document: dict[str, Any], sig: signing.Signature, links: ReportLinks, traceparent: str
) -> list[OutboxEntry]:
    common = {"case_id": document["case_id"], "tenant_id": document["tenant_id"]}
    rid, concordance = document["report_id"], document["opinion"]["concordance"]
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
        content_sha256=sig.content_sha256,
        links=links,
    )
    return [outbox_entry(e, traceparent=traceparent) for e in (submitted, ready)]


async def submit_opinion(
    store: ReportingStore,
    signer: Signer,
    assignment_id: str,
    reviewer_id: str,
    draft: domain.OpinionDraft | None,
) -> tuple[str, list[OutboxEntry]]:
    """Sign and store the assigned reviewer's complete opinion once; never edited."""
    assignment = await my_assignment(store, assignment_id, reviewer_id)
    if draft is None:
        draft = domain.OpinionDraft.model_validate(assignment.get("draft") or {})
    opinion = domain.complete_opinion(draft, assignment["subspecialty"])
    reviewer = domain.Reviewer(
        reviewer_id=reviewer_id,
        name=assignment.get("reviewer_name", ""),
        credentials=assignment.get("reviewer_credentials", ""),
    )
    assignment = {**assignment, "assignment_id": assignment["_id"]}
    document = domain.report_document(assignment, reviewer, opinion, now_iso())
    sig = signer.sign(document)
    links = signer.links(document["report_id"])
    outbox = _report_events(document, sig, links, assignment.get("traceparent", ""))
    doc = {"_id": document["report_id"], "document": document, "signature": sig.model_dump()}
    if not await store.insert(store.reports, doc, outbox):
        raise Conflict("an opinion was already submitted for this assignment; use an addendum")
    await store.mark_reported(assignment_id, document["report_id"])
    return document["report_id"], outbox


async def add_addendum(
    store: ReportingStore,
    signer: Signer,
    report_id: str,
    reviewer_id: str,
    addendum: domain.Addendum,
) -> tuple[str, list[OutboxEntry]]:
    """Append the author's signed answer to a follow-up question; the report stays as signed."""
    report = await store.report(report_id)
    if report is None:
        raise NotFound(f"no report {report_id}")
    document = report["document"]
    if document["reviewer_id"] != reviewer_id:
        raise Forbidden("only the report's author may add an addendum")
    sequence = len(await store.report_addenda(report_id)) + 1
    sha = report["signature"]["content_sha256"]
    add = domain.addendum_document(document, sha, sequence, addendum, now_iso())
    sig = signer.sign(add)
    event = ReportAddendum(
        case_id=add["case_id"],
        tenant_id=add["tenant_id"],
        report_id=report_id,
        addendum_id=add["addendum_id"],
        reviewer_id=reviewer_id,
        signed_at=add["signed_at"],
        content_sha256=sig.content_sha256,
        links=signer.links(report_id),
    )
    outbox = [outbox_entry(event, traceparent=current_traceparent())]
    doc = {"_id": add["addendum_id"], "report_id": report_id, "sequence": sequence}
    if not await store.insert(
        store.addenda, {**doc, "document": add, "signature": sig.model_dump()}, outbox
    ):
        raise Conflict("another addendum was added at the same time; try again")
    return add["addendum_id"], outbox


# ---------------------------------------------------------------- reading


async def readable_report(
    store: ReportingStore, report_id: str, role: str, tenant_id: str, subject: str
) -> tuple[Doc, list[Doc]]:
    """The report and its addenda, for the case's tenant's partner or its author;
    anyone else gets NotFound (never learns the report exists)."""
    report = await store.report(report_id)
    if report is not None:
        document = report["document"]
        if (role == "partner" and document["tenant_id"] == tenant_id) or (
            role == "reviewer" and document["reviewer_id"] == subject
        ):
            return report, await store.report_addenda(report_id)
    raise NotFound(f"no report {report_id}")

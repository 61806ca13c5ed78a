"""reporting's handlers: learn what the report names about a case from
case.accepted and records.complete; learn who may report from case.assigned / case.reassigned;
turn the assigned reviewer's opinion into a signed report (report.submitted +
report.ready: ids, plus links kept for compatibility); append signed addenda
(report.addendum).

Every handler reads "now" from the injected clock (`Reporting.clock`) and the
database only through `ReportingStore`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.reporting import domain, signing
from services.reporting.keys import KeyRing
from services.reporting.store import (
    AssignmentCopy,
    CaseRecord,
    ReportingStore,
    StoredAddendum,
    StoredReport,
)
from shared.clock import Clock
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import Conflict, Forbidden, NotFound
from shared.events import (
    CaseAccepted,
    CaseAssigned,
    CaseReassigned,
    RecordsComplete,
    ReportAddendum,
    ReportLinks,
    ReportReady,
    ReportSubmitted,
    partner_topic,
)
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


@dataclass(frozen=True)
class Reporting:
    """What the handlers work with: the store, the signer and the clock."""

    store: ReportingStore
    signer: Signer
    clock: Clock

    def now(self) -> datetime:
        """The clock's instant to the second, as a signed document states it."""
        return self.clock.now().replace(microsecond=0)


def iso(instant: datetime) -> str:
    return instant.isoformat(timespec="seconds")


# ---------------------------------------------------------------- cases


async def record_case_accepted(ctx: Reporting, event: CaseAccepted, meta: EventMeta) -> None:
    """Keep whom the case is about, its question, the opinion under review and its addressee."""
    record = CaseRecord(
        case_id=event.case_id,
        tenant_id=event.tenant_id,
        accepted=True,
        external_id=event.external_id,
        request_reference=event.request_reference,
        patient=event.patient,
        question=event.question,
        first_opinion=event.first_opinion,
        treating_clinician_email=event.treating_clinician_email,
        diagnoses=event.diagnoses,
    )
    await ctx.store.record_case(record, CaseRecord.FROM_CASE_ACCEPTED, meta.event_id)


async def record_records_complete(ctx: Reporting, event: RecordsComplete, meta: EventMeta) -> None:
    """Keep the records manifest: the materials the report says were reviewed."""
    record = CaseRecord(
        case_id=event.case_id,
        tenant_id=event.tenant_id,
        manifest=event.manifest,
        records_completed_at=event.completed_at,
    )
    await ctx.store.record_case(record, CaseRecord.FROM_RECORDS_COMPLETE, meta.event_id)


# ---------------------------------------------------------------- assignments


async def record_assignment(ctx: Reporting, event: CaseAssigned, meta: EventMeta) -> None:
    """Remember who may report on this assignment, and the case's trace to continue it."""
    copy = AssignmentCopy(
        assignment_id=event.assignment_id,
        case_id=event.case_id,
        tenant_id=event.tenant_id,
        reviewer_id=event.reviewer_id,
        reviewer_name=event.reviewer_name,
        reviewer_credentials=event.reviewer_credentials,
        reviewer_npi=event.reviewer_npi,
        reviewer_licence_jurisdiction=event.reviewer_licence_jurisdiction,
        subspecialty=event.subspecialty,
        due_at=event.due_at,
        received_at=ctx.clock.now(),
        traceparent=current_traceparent(),
        images=event.images,
    )
    await ctx.store.record_assignment(copy, meta.event_id)


async def record_reassignment(ctx: Reporting, event: CaseReassigned) -> None:
    """The previous reviewer's open assignments on the case are withdrawn."""
    await ctx.store.withdraw_open(event.case_id, event.from_reviewer_id)


async def _is_current(store: ReportingStore, assignment: AssignmentCopy) -> bool:
    if assignment.withdrawn:
        return False
    latest = await store.latest_assignment_id(assignment.case_id, assignment.subspecialty)
    return latest == assignment.assignment_id


async def open_assignments(ctx: Reporting, reviewer_id: str) -> list[AssignmentCopy]:
    copies = await ctx.store.open_assignments(reviewer_id)
    return [c for c in copies if await _is_current(ctx.store, c)]


async def my_assignment(ctx: Reporting, assignment_id: str, reviewer_id: str) -> AssignmentCopy:
    """The assignment, if this reviewer holds it now; else NotFound / Forbidden."""
    assignment = await ctx.store.assignment(assignment_id)
    if assignment is None:
        raise NotFound(f"no assignment {assignment_id}")
    if assignment.reviewer_id != reviewer_id:
        raise Forbidden("only the reviewer assigned to this case may write its opinion")
    if not await _is_current(ctx.store, assignment):
        raise Forbidden("this assignment was reassigned; it is no longer yours to report")
    return assignment


async def assignment_for_case(ctx: Reporting, case_id: str, reviewer_id: str) -> str:
    """The reviewer's one open assignment on a case (the case-addressed route)."""
    copies = [c for c in await open_assignments(ctx, reviewer_id) if c.case_id == case_id]
    if len(copies) == 1:
        return copies[0].assignment_id
    if copies:
        raise Conflict("several open assignments on this case; submit per assignment id")
    if await ctx.store.has_reported(case_id, reviewer_id):
        raise Conflict("an opinion was already submitted for this assignment; use an addendum")
    raise Forbidden("only the reviewer assigned to this case may submit its opinion")


async def save_draft(
    ctx: Reporting, assignment_id: str, reviewer_id: str, draft: domain.OpinionDraft
) -> list[tuple[str, str]]:
    """Keep the reviewer's unfinished opinion; returns what is still missing."""
    assignment = await my_assignment(ctx, assignment_id, reviewer_id)
    if assignment.reported:
        raise Conflict("the opinion was already submitted; use an addendum")
    await ctx.store.save_draft(assignment_id, draft)
    return domain.opinion_gaps(draft, assignment.subspecialty)


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
    # report.ready twice: on the shared topic for the router's services (notify), and
    # on the tenant's own partner channel, the only one its partners may read.
    partner = partner_topic(ready.tenant_id, ready.topic)
    return [
        outbox_entry(submitted, traceparent=traceparent),
        outbox_entry(ready, traceparent=traceparent),
        outbox_entry(ready, traceparent=traceparent, topic=partner),
    ]


async def submit_opinion(
    ctx: Reporting,
    assignment_id: str,
    reviewer_id: str,
    draft: domain.OpinionDraft | None,
) -> tuple[str, list[OutboxEntry]]:
    """Sign and store the assigned reviewer's complete opinion once; never edited."""
    assignment = await my_assignment(ctx, assignment_id, reviewer_id)
    if draft is None:
        draft = assignment.draft or domain.OpinionDraft()
    opinion = domain.complete_opinion(draft, assignment.subspecialty)
    reviewer = domain.Reviewer(
        reviewer_id=reviewer_id,
        name=assignment.reviewer_name,
        credentials=assignment.reviewer_credentials,
        npi=assignment.reviewer_npi,
        licence_jurisdiction=assignment.reviewer_licence_jurisdiction,
    )
    case = await ctx.store.case(assignment.case_id)
    signed_at = ctx.now()
    document = domain.report_document(
        assignment.model_dump(include={"case_id", "tenant_id", "assignment_id", "subspecialty"}),
        reviewer,
        opinion,
        iso(signed_at),
        case=case.details()
        if case is not None and case.tenant_id == assignment.tenant_id
        else None,
    )
    sig = ctx.signer.sign(document)
    links = ctx.signer.links(document["report_id"])
    outbox = _report_events(document, sig, links, assignment.traceparent)
    report = StoredReport(
        report_id=document["report_id"],
        case_id=assignment.case_id,
        tenant_id=assignment.tenant_id,
        reviewer_id=reviewer_id,
        assignment_id=assignment_id,
        signed_at=signed_at,
        document=document,
        signature=sig,
    )
    if not await ctx.store.insert_report(report, outbox):
        raise Conflict("an opinion was already submitted for this assignment; use an addendum")
    await ctx.store.mark_reported(assignment_id, report.report_id)
    return report.report_id, outbox


async def add_addendum(
    ctx: Reporting, report_id: str, reviewer_id: str, addendum: domain.Addendum
) -> tuple[str, list[OutboxEntry]]:
    """Append the author's signed answer to a follow-up question; the report stays as signed."""
    report = await ctx.store.report(report_id)
    if report is None:
        raise NotFound(f"no report {report_id}")
    if report.reviewer_id != reviewer_id:
        raise Forbidden("only the report's author may add an addendum")
    sequence = len(await ctx.store.report_addenda(report_id)) + 1
    signed_at = ctx.now()
    add = domain.addendum_document(
        report.document, report.signature.content_sha256, sequence, addendum, iso(signed_at)
    )
    sig = ctx.signer.sign(add)
    event = ReportAddendum(
        case_id=report.case_id,
        tenant_id=report.tenant_id,
        report_id=report_id,
        addendum_id=add["addendum_id"],
        reviewer_id=reviewer_id,
        signed_at=signed_at,
        content_sha256=sig.content_sha256,
        links=ctx.signer.links(report_id),
    )
    outbox = [outbox_entry(event, traceparent=current_traceparent())]
    stored = StoredAddendum(
        addendum_id=add["addendum_id"],
        report_id=report_id,
        sequence=sequence,
        signed_at=signed_at,
        document=add,
        signature=sig,
    )
    if not await ctx.store.insert_addendum(stored, outbox):
        raise Conflict("another addendum was added at the same time; try again")
    return stored.addendum_id, outbox


# ---------------------------------------------------------------- reading


async def readable_report(
    ctx: Reporting, report_id: str, role: str, tenant_id: str, subject: str
) -> tuple[StoredReport, list[StoredAddendum]]:
    """The report and its addenda, for the case's tenant's partner, its author
    or notify (role `service`, subject `notify`: it e-mails the PDF to the
    treating clinician); anyone else gets NotFound (never learns it exists)."""
    report = await ctx.store.report(report_id)
    if report is not None and (
        (role == "partner" and report.tenant_id == tenant_id)
        or (role == "reviewer" and report.reviewer_id == subject)
        or (role == "service" and subject == "notify")
    ):
        return report, await ctx.store.report_addenda(report_id)
    raise NotFound(f"no report {report_id}")

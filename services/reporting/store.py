"""reporting's own collections and the typed documents it keeps in them:

- `assignments`: one `AssignmentCopy` per assignment id (learnt from
  case.assigned; withdrawn by case.reassigned), with the reviewer's saved draft;
- `reports`: one `StoredReport` per signed opinion (the document exactly as
  signed, its signature), with the outbox; never updated after insertion
  except by the relay;
- `addenda`: one `StoredAddendum` per signed answer to a follow-up question;
- `cases`: one `CaseRecord` per case, what the report must name about it:
  the patient, the question, the first opinion and the addressee (from
  case.accepted) and the materials reviewed (from records.complete's manifest).
  The two topics are not ordered with each other, so each event sets only its
  own fields on an upserted document.

Events are written with the shared outbox API (`shared.store`), never by hand.
The signed `document` is kept as the JSON object that was signed, not as a
model: a round trip through a model could change its bytes (a timestamp's
format, a default filled in) and so break its signature. The fields a handler
reads (ids, tenant, reviewer, `signed_at` as a datetime) are typed beside it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.collection import AsyncCollection

from services.reporting.domain import CaseDetails, OpinionDraft
from services.reporting.signing import Signature
from shared.envelope import OutboxEntry
from shared.events import (
    CaseSubmittedFirstOpinion,
    CaseSubmittedPatient,
    Coding,
    ImageLink,
    ManifestItem,
)
from shared.store import WITHOUT_OUTBOX, Doc, apply_once, insert_with_outbox, update_if


class Stored(BaseModel):
    """A document of one of reporting's collections: `_id` is the model's id field."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    def to_mongo(self) -> Doc:
        return self.model_dump(by_alias=True)


class AssignmentCopy(Stored):
    """What reporting keeps of one case.assigned: who may report, on what, until
    when; plus the reviewer's unfinished draft and whether it was reported."""

    assignment_id: str = Field(alias="_id")
    case_id: str
    tenant_id: str
    reviewer_id: str
    reviewer_name: str = ""
    reviewer_credentials: str = ""
    reviewer_npi: str = ""
    reviewer_licence_jurisdiction: str = ""
    subspecialty: str
    due_at: datetime
    # Orders the assignments of one case (one partition, so arrival order).
    received_at: datetime
    # The case's trace, continued by the report's events.
    traceparent: str = ""
    reported: bool = False
    report_id: str = ""
    withdrawn: bool = False
    draft: OpinionDraft | None = None
    # Where the reviewer opens the case's studies (the review PACS viewer).
    images: list[ImageLink] = []


class CaseRecord(Stored):
    """What reporting keeps of a case for its report (docs/reporting.md).
    PHI: read only to render and sign the case's own report."""

    case_id: str = Field(alias="_id")
    tenant_id: str
    accepted: bool = False  # case.accepted was received
    external_id: str = ""
    request_reference: str = ""
    patient: CaseSubmittedPatient | None = None
    question: str = ""
    first_opinion: CaseSubmittedFirstOpinion | None = None
    treating_clinician_email: str = ""
    diagnoses: list[Coding] = []
    manifest: list[ManifestItem] | None = None  # None until records.complete
    records_completed_at: datetime | None = None

    # What each topic sets (the two are not ordered with each other).
    FROM_CASE_ACCEPTED: ClassVar[set[str]] = {
        "accepted",
        "external_id",
        "request_reference",
        "patient",
        "question",
        "first_opinion",
        "treating_clinician_email",
        "diagnoses",
    }
    FROM_RECORDS_COMPLETE: ClassVar[set[str]] = {"manifest", "records_completed_at"}

    def details(self) -> CaseDetails:
        return CaseDetails(
            external_id=self.external_id,
            request_reference=self.request_reference,
            patient=self.patient,
            question=self.question,
            first_opinion=self.first_opinion,
            treating_clinician_email=self.treating_clinician_email,
            diagnoses=self.diagnoses,
            materials=self.manifest,
            records_completed_at=self.records_completed_at.isoformat(timespec="seconds")
            if self.records_completed_at
            else "",
        )


class StoredReport(Stored):
    report_id: str = Field(alias="_id")
    case_id: str
    tenant_id: str
    reviewer_id: str
    assignment_id: str
    signed_at: datetime
    document: dict[str, Any]  # exactly as signed
    signature: Signature


class StoredAddendum(Stored):
    addendum_id: str = Field(alias="_id")
    report_id: str
    sequence: int
    signed_at: datetime
    document: dict[str, Any]  # exactly as signed
    signature: Signature


# What case.assigned sets on an assignment copy; the rest is reporting's own state.
_FROM_EVENT = {
    "case_id",
    "tenant_id",
    "reviewer_id",
    "reviewer_name",
    "reviewer_credentials",
    "reviewer_npi",
    "reviewer_licence_jurisdiction",
    "subspecialty",
    "due_at",
    "received_at",
    "traceparent",
    "images",
}


class ReportingStore:
    def __init__(
        self,
        assignments: AsyncCollection[Doc],
        reports: AsyncCollection[Doc],
        addenda: AsyncCollection[Doc],
        cases: AsyncCollection[Doc],
    ) -> None:
        self.assignments = assignments
        self.reports = reports
        self.addenda = addenda
        self.cases = cases

    async def create_indexes(self) -> None:
        await self.assignments.create_index([("reviewer_id", 1), ("reported", 1)])
        await self.assignments.create_index([("case_id", 1), ("subspecialty", 1)])
        await self.assignments.create_index([("case_id", 1), ("reviewer_id", 1)])
        await self.addenda.create_index([("report_id", 1), ("sequence", 1)])

    # ------------------------------------------------------------ cases

    async def record_case(self, record: CaseRecord, fields: set[str], event_id: str | None) -> bool:
        """Set one event's `fields` of `record` on the case's document, once per
        event (a redelivery is skipped); the other topic's fields are kept."""
        update = {"$set": record.model_dump(mode="python", include=fields | {"tenant_id"})}
        return await apply_once(self.cases, record.case_id, event_id, update)

    async def case(self, case_id: str) -> CaseRecord | None:
        doc = await self.cases.find_one({"_id": case_id}, WITHOUT_OUTBOX)
        return CaseRecord.model_validate(doc) if doc else None

    # ------------------------------------------------------------ assignments

    async def record_assignment(self, copy: AssignmentCopy, event_id: str | None) -> bool:
        """Store what case.assigned says, once per event (a redelivery is skipped);
        a draft or a report already made on the assignment is kept."""
        fields = copy.model_dump(include=_FROM_EVENT)
        update = {"$set": fields, "$setOnInsert": {"reported": False}}
        return await apply_once(self.assignments, copy.assignment_id, event_id, update)

    async def assignment(self, assignment_id: str) -> AssignmentCopy | None:
        doc = await self.assignments.find_one({"_id": assignment_id}, WITHOUT_OUTBOX)
        # A document without case_id was never made by a case.assigned.
        return AssignmentCopy.model_validate(doc) if doc and "case_id" in doc else None

    async def latest_assignment_id(self, case_id: str, subspecialty: str) -> str | None:
        """The assignment the newest case.assigned for this case and subspecialty made."""
        doc = await self.assignments.find_one(
            {"case_id": case_id, "subspecialty": subspecialty, "received_at": {"$exists": True}},
            {"_id": 1},
            sort=[("received_at", -1)],
        )
        return str(doc["_id"]) if doc else None

    async def open_assignments(self, reviewer_id: str) -> list[AssignmentCopy]:
        query: Doc = {"reviewer_id": reviewer_id, "reported": False}
        # Withdrawn ones are dropped here, not in the query: a third condition makes
        # SecantusDB scan the whole collection instead of the (reviewer_id, reported)
        # index, and a reviewer's unreported assignments are few (their capacity).
        docs = await self.assignments.find(query, WITHOUT_OUTBOX).to_list()
        copies = [AssignmentCopy.model_validate(d) for d in docs if "case_id" in d]
        return [c for c in copies if not c.withdrawn]

    async def has_reported(self, case_id: str, reviewer_id: str) -> bool:
        """Whether this reviewer already reported on an assignment of the case."""
        query = {"case_id": case_id, "reviewer_id": reviewer_id, "reported": True}
        return await self.assignments.find_one(query, {"_id": 1}) is not None

    async def withdraw_open(self, case_id: str, reviewer_id: str) -> None:
        """The reviewer's unreported assignments on the case are no longer theirs
        (setting a flag is idempotent, so a redelivery needs no guard)."""
        await self.assignments.update_many(
            {"case_id": case_id, "reviewer_id": reviewer_id, "reported": False},
            {"$set": {"withdrawn": True}},
        )

    async def save_draft(self, assignment_id: str, draft: OpinionDraft) -> None:
        await update_if(
            self.assignments,
            {"_id": assignment_id},
            {"$set": {"draft": draft.model_dump(mode="json")}},
        )

    async def mark_reported(self, assignment_id: str, report_id: str) -> None:
        await update_if(
            self.assignments,
            {"_id": assignment_id},
            {"$set": {"reported": True, "report_id": report_id}},
        )

    # ------------------------------------------------------------ reports

    async def insert_report(self, report: StoredReport, outbox: list[OutboxEntry]) -> bool:
        """Store a signed report and its events in one write; False if it exists."""
        return await insert_with_outbox(self.reports, _signed_doc(report), outbox)

    async def insert_addendum(self, addendum: StoredAddendum, outbox: list[OutboxEntry]) -> bool:
        """Store a signed addendum and its event in one write; False if its id exists."""
        return await insert_with_outbox(self.addenda, _signed_doc(addendum), outbox)

    async def report(self, report_id: str) -> StoredReport | None:
        doc = await self.reports.find_one({"_id": report_id}, WITHOUT_OUTBOX)
        return StoredReport.model_validate(doc) if doc else None

    async def report_addenda(self, report_id: str) -> list[StoredAddendum]:
        cursor = self.addenda.find({"report_id": report_id}, WITHOUT_OUTBOX)
        docs = await cursor.sort("sequence", 1).to_list()
        return [StoredAddendum.model_validate(d) for d in docs]


def _signed_doc(record: StoredReport | StoredAddendum) -> Doc:
    doc = record.to_mongo()
    doc["signature"] = record.signature.model_dump(mode="json")
    doc["document"] = record.document  # untouched, as signed
    return doc

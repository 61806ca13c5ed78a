"""reporting's domain, free of I/O: the structured second opinion, the rules
that say when it is complete, and the documents that are signed: the report
and its addenda (their canonical form and signature: `signing`).

A reviewer may save an incomplete `OpinionDraft`; submission turns it into an
`Opinion` only when every required part is there (`complete_opinion`), and
names each missing part by its field. A submitted report is frozen: follow-up
answers are separate `addendum` documents that quote the report's hash, each
signed in turn, so the original signature stays valid for ever.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInput
from shared.events import (
    CaseSubmittedFirstOpinion,
    CaseSubmittedPatient,
    Coding,
    Concordance,
    ManifestItem,
)
from shared.vocabulary import imaging_reread


class OriginalReportReference(StrEnum):
    """How the reviewer's reading stands against the original report's wording."""

    CONFIRMED = "confirmed"
    REFINED = "refined"
    REVISED = "revised"


class ImagingReview(BaseModel):
    """For imaging: the reviewer's own findings, against the original report's wording."""

    model_config = ConfigDict(extra="forbid")
    findings: str = Field(default="", max_length=20000, description="In the reviewer's words")
    original_wording: str = Field(
        default="", max_length=4000, description="Quoted from the original report"
    )
    reference: OriginalReportReference | None = None
    assessment: str = Field(
        default="",
        max_length=500,
        description="One line: does diagnosis, severity or staging change?",
    )


class OpinionDraft(BaseModel):
    """The structured written second opinion (docs/reporting.md), possibly
    unfinished: types are checked on every save, completeness only on submission."""

    model_config = ConfigDict(extra="forbid")
    agrees_with_diagnosis: bool | None = None
    diagnosis: str = Field(default="", max_length=2000, description="Required when disagreeing")
    diagnosis_rationale: str = Field(
        default="", max_length=8000, description="Required when disagreeing"
    )
    agrees_with_treatment_plan: bool | None = None
    would_do_differently: str = Field(
        default="", max_length=8000, description="Required when disagreeing with the plan"
    )
    information_that_would_change_opinion: str = Field(default="", max_length=8000)
    recommended_next_steps: list[str] = Field(default=[], max_length=50)
    concordance: Concordance | None = None
    imaging: ImagingReview | None = Field(
        default=None, description="Required for imaging subspecialties"
    )


# A submitted opinion has the same shape as a draft; `complete_opinion` is its gate.
Opinion = OpinionDraft


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _imaging_gaps(imaging: ImagingReview | None) -> list[tuple[str, str]]:
    if imaging is None:
        return [("imaging", "the imaging review is required for an imaging re-read")]
    gaps = []
    if len(imaging.findings.strip()) < 10:
        gaps.append(("imaging.findings", "the findings in your own words are required"))
    if _blank(imaging.original_wording):
        gaps.append(("imaging.original_wording", "quote the original report's wording"))
    if imaging.reference is None:
        gaps.append(("imaging.reference", "say whether it is confirmed, refined or revised"))
    if _blank(imaging.assessment) or "\n" in imaging.assessment.strip():
        gaps.append(("imaging.assessment", "one line: does diagnosis, severity or staging change?"))
    return gaps


def _consistency_gaps(d: OpinionDraft) -> list[tuple[str, str]]:
    """Concordance must agree with the answer on the diagnosis."""
    if d.agrees_with_diagnosis is False and d.concordance not in (None, Concordance.CHANGED):
        return [("concordance", "disagreeing with the diagnosis means changed_diagnosis")]
    if d.agrees_with_diagnosis is True and d.concordance == Concordance.CHANGED:
        return [("concordance", "changed_diagnosis contradicts agreeing with the diagnosis")]
    return []


def opinion_gaps(draft: OpinionDraft, subspecialty: str) -> list[tuple[str, str]]:
    """Every required part that is missing or contradictory, as (field, why)."""
    gaps: list[tuple[str, str]] = []
    if draft.agrees_with_diagnosis is None:
        gaps.append(("agrees_with_diagnosis", "say whether you agree with the diagnosis"))
    elif not draft.agrees_with_diagnosis:
        if _blank(draft.diagnosis):
            gaps.append(("diagnosis", "your diagnosis is required when disagreeing"))
        if _blank(draft.diagnosis_rationale):
            gaps.append(("diagnosis_rationale", "say why, when disagreeing"))
    if draft.agrees_with_treatment_plan is None:
        gaps.append(("agrees_with_treatment_plan", "say whether you agree with the plan"))
    elif not draft.agrees_with_treatment_plan and _blank(draft.would_do_differently):
        gaps.append(("would_do_differently", "required when disagreeing with the plan"))
    if _blank(draft.information_that_would_change_opinion):
        gaps.append(
            ("information_that_would_change_opinion", "what would change your mind is required")
        )
    if not [s for s in draft.recommended_next_steps if s.strip()]:
        gaps.append(("recommended_next_steps", "at least one recommended next step"))
    if draft.concordance is None:
        gaps.append(("concordance", "confirmed, refined or changed_diagnosis"))
    gaps += _consistency_gaps(draft)
    if imaging_reread(subspecialty) or draft.imaging is not None:
        gaps += _imaging_gaps(draft.imaging)
    return gaps


def complete_opinion(draft: OpinionDraft, subspecialty: str) -> Opinion:
    """The draft as a submittable opinion, or InvalidInput naming each missing part."""
    gaps = opinion_gaps(draft, subspecialty)
    if gaps:
        errors = [{"loc": f"body.{f}", "msg": msg, "type": "missing"} for f, msg in gaps]
        raise InvalidInput("the opinion is incomplete", errors=errors)
    return draft


class Reviewer(BaseModel):
    """Who signs: as the assignment named them (from its roster)."""

    model_config = ConfigDict(frozen=True)
    reviewer_id: str
    name: str = ""
    credentials: str = ""
    npi: str = ""
    licence_jurisdiction: str = ""


class Addendum(BaseModel):
    """A reviewer's answer to a follow-up question on a signed report."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=4000)
    answer: str = Field(min_length=1, max_length=8000)


def report_id_for(case_id: str, assignment_id: str) -> str:
    return "rpt-" + uuid.uuid5(uuid.NAMESPACE_URL, f"{case_id}/{assignment_id}").hex[:20]


class CaseDetails(BaseModel):
    """What the report must name about its case, as reporting learnt it from
    case.accepted (whom, the question, the opinion under review, to whom it goes)
    and records.complete (the materials reviewed). Every part is optional: what
    was not received is shown as such, never invented."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    external_id: str = ""
    request_reference: str = ""
    patient: CaseSubmittedPatient | None = None
    question: str = ""
    first_opinion: CaseSubmittedFirstOpinion | None = None
    treating_clinician_email: str = ""
    diagnoses: list[Coding] = []
    materials: list[ManifestItem] | None = None
    records_completed_at: str = ""


def _case_parts(case: CaseDetails, tenant_id: str) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "case_reference": {
            "external_id": case.external_id,
            "request_reference": case.request_reference,
        },
        "addressee": {
            "treating_clinician_email": case.treating_clinician_email,
            "requesting_organisation": tenant_id,
        },
    }
    if case.patient is not None:
        p = case.patient
        parts["patient"] = {
            "name": p.name,
            "birth_date": p.birth_date,
            "sex": p.sex,
            "identifiers": [i.model_dump() for i in p.identifiers],
        }
    if case.question:
        parts["clinical_question"] = case.question
    if case.first_opinion is not None:
        parts["first_opinion"] = case.first_opinion.model_dump(
            include={"diagnosis", "treatment_plan", "report_text", "clinician_name", "institution"}
        )
    if case.diagnoses:
        parts["diagnoses"] = [c.model_dump() for c in case.diagnoses]
    if case.materials is not None:
        parts["materials_reviewed"] = [m.model_dump(mode="json") for m in case.materials]
        parts["records_completed_at"] = case.records_completed_at
    return parts


def report_document(
    assignment: dict[str, Any],
    reviewer: Reviewer,
    opinion: Opinion,
    signed_at: str,
    case: CaseDetails | None = None,
) -> dict[str, Any]:
    """The report as signed: everything a partner relies on, nothing else.

    The case reference (`case_id`, with `tenant_id` and `assignment_id`) is always
    signed; so are, when reporting holds them (from case.accepted and
    records.complete), the integrator's references (`case_reference`), the patient
    with their identifiers, the clinical question, the first opinion under review,
    the addressee and the materials reviewed: a report cannot be presented as
    being about another patient, question or set of records."""
    document: dict[str, Any] = {
        "kind": "second_opinion",
        "report_id": report_id_for(assignment["case_id"], assignment["assignment_id"]),
        "case_id": assignment["case_id"],
        "tenant_id": assignment["tenant_id"],
        "assignment_id": assignment["assignment_id"],
        "subspecialty": assignment["subspecialty"],
        "reviewer": reviewer.model_dump(),
        "reviewer_id": reviewer.reviewer_id,
        "opinion": opinion.model_dump(mode="json"),
        "signed_at": signed_at,
    }
    if case is not None:
        document.update(_case_parts(case, assignment["tenant_id"]))
    return document


def addendum_document(
    report: dict[str, Any], report_sha256: str, sequence: int, addendum: Addendum, signed_at: str
) -> dict[str, Any]:
    """An addendum quotes the report's hash: it extends the report, never edits it."""
    return {
        "kind": "addendum",
        "addendum_id": f"{report['report_id']}-a{sequence}",
        "report_id": report["report_id"],
        "report_sha256": report_sha256,
        "sequence": sequence,
        "case_id": report["case_id"],
        "tenant_id": report["tenant_id"],
        "reviewer": report["reviewer"],
        "reviewer_id": report["reviewer_id"],
        "question": addendum.question,
        "answer": addendum.answer,
        "signed_at": signed_at,
    }

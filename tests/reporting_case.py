# ruff: noqa: RUF001, RUF002  (the text outside Latin-1 is the point)
"""A complete case as reporting learns it (case.accepted, records.complete,
case.assigned), shared by the PDF, FHIR and signature tests: long enough to run
over several pages, with text outside Latin-1 (≥, →, ü, ×, CJK) in the parts a
physician reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.reporting import domain
from shared.events import (
    CaseSubmittedFirstOpinion,
    CaseSubmittedPatient,
    Coding,
    ManifestItem,
    PatientIdentifier,
    RecordKind,
    StudySummary,
)

SIGNED_AT = "2026-11-20T10:00:00+00:00"
ADDENDUM_AT = "2026-11-22T09:30:00+00:00"
ASSIGNMENT = {
    "case_id": "case-7f3a",
    "tenant_id": "demo-health",
    "assignment_id": "asg-7f3a-1",
    "subspecialty": "neuroradiology",
}
REVIEWER = domain.Reviewer(
    reviewer_id="rev-neuro-1",
    name="Dr. Ines Moreau",
    credentials="MD, ABR Neuroradiology CAQ",
    npi="1234567802",
    licence_jurisdiction="US-CA",
)
PATIENT = CaseSubmittedPatient(
    name="Jürgen Müller-Łukasz 李明",
    birth_date="1961-04-09",
    sex="male",
    jurisdiction="US-CA",
    identifiers=[
        PatientIdentifier(system="urn:oid:2.16.840.1.113883.3.7418", value="MRN-0042817"),
        PatientIdentifier(system="https://stmarys.example/mrn", value="SM-99120"),
    ],
)
QUESTION = (
    "Is the enhancing left temporal lesion a low-grade glioma (→ resection) or a subacute "
    "infarct (→ follow-up)? DWI ≥ 2× contralateral signal; patient's daughter reads Chinese: "
    "脑梗死还是胶质瘤？"
)
FIRST_OPINION = CaseSubmittedFirstOpinion(
    diagnosis="Low-grade glioma, left temporal lobe (WHO grade 2 suspected)",
    treatment_plan="Awake craniotomy and resection within 4 weeks; then adjuvant review.",
    report_text=(
        "MRI brain with and without contrast: 3.1 × 2.4 cm T2/FLAIR hyperintense lesion in "
        "the left temporal lobe with patchy enhancement. Restricted diffusion. Impression: "
        "cannot exclude low-grade glioma. Recommend neurosurgical consultation. " * 3
    ).strip(),
    clinician_id="dr-first",
    clinician_name="Dr. Paul Anders",
    institution="St Mary's Regional Hospital",
)
MANIFEST = [
    ManifestItem(
        kind=RecordKind.IMAGING,
        present=True,
        count=2,
        studies=[
            StudySummary(
                study_uid="1.2.840.113619.2.55.3.1",
                modality="MR",
                study_date="2026-10-30",
                description="MRI brain w/wo contrast",
                instances=412,
            ),
            StudySummary(
                study_uid="1.2.840.113619.2.55.3.2",
                modality="CT",
                study_date="2026-10-28",
                description="CT head without contrast",
                instances=96,
            ),
        ],
    ),
    ManifestItem(kind=RecordKind.REPORTS, present=True, count=2, detail="radiology reports"),
    ManifestItem(kind=RecordKind.NOTES, present=True, count=3, detail="neurology, ED notes"),
    ManifestItem(kind=RecordKind.LABS, present=True, count=14, detail="CBC, CMP, coagulation"),
    ManifestItem(kind=RecordKind.PATHOLOGY, present=False, count=0, detail="no biopsy yet"),
]
CASE = domain.CaseDetails(
    external_id="SMRH-2026-118",
    request_reference="ServiceRequest/sr-118",
    patient=PATIENT,
    question=QUESTION,
    first_opinion=FIRST_OPINION,
    treating_clinician_email="p.anders@stmarys.example",
    diagnoses=[
        Coding(
            system="http://hl7.org/fhir/sid/icd-10-cm",
            code="D43.0",
            display="Neoplasm of uncertain behavior of brain, supratentorial",
        )
    ],
    materials=MANIFEST,
    records_completed_at=datetime(2026, 11, 18, 14, 0, tzinfo=UTC).isoformat(timespec="seconds"),
)
ADDENDUM = domain.Addendum(
    question="Does the perfusion study change the opinion? (rCBV ≥ 1.75 → tumour?)",
    answer=(
        "No. rCBV 0.9 (< 1.75) in the lesion → consistent with infarct; DWI ≥ 2× persists as "
        "expected at 3 weeks. Über-cautious resection is not indicated. 随访MRI六周。"
    ),
)


def opinion_json() -> dict[str, Any]:
    return {
        "agrees_with_diagnosis": False,
        "diagnosis": "Subacute infarct (left MCA, inferior division) rather than neoplasm",
        "diagnosis_rationale": (
            "Gyriform enhancement confined to the cortex, restricted diffusion ≥ 2× "
            "contralateral, vascular territory, no mass effect; follows an episode of "
            "expressive aphasia on 2026-10-25. " * 4
        ).strip(),
        "agrees_with_treatment_plan": False,
        "would_do_differently": "Defer resection; MRI with perfusion in 6 weeks; stroke work-up.",
        "information_that_would_change_opinion": "Growth or new enhancement on follow-up.",
        "recommended_next_steps": [
            "MRI with perfusion (DSC) in 6 weeks",
            "Stroke work-up: CTA head/neck, echocardiogram, Holter",
            "Neurology referral",
        ],
        "concordance": "changed_diagnosis",
        "imaging": {
            "findings": (
                "Gyriform enhancement in the left MCA territory without mass effect; "
                "DWI bright with low ADC. " * 5
            ).strip(),
            "original_wording": "cannot exclude low-grade glioma",
            "reference": "revised",
            "assessment": "Diagnosis changes from possible neoplasm to subacute infarct.",
        },
    }


def report_document(case: domain.CaseDetails | None = CASE) -> dict[str, Any]:
    opinion = domain.complete_opinion(
        domain.OpinionDraft.model_validate(opinion_json()), ASSIGNMENT["subspecialty"]
    )
    return domain.report_document(ASSIGNMENT, REVIEWER, opinion, SIGNED_AT, case)

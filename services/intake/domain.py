"""Intake's domain rules, free of I/O: the case identity, release authorization,
triage signals and the subspecialty the clinical question needs.

The wording of the rules comes from the field (design.md §3 intake); each
signal and inference carries the phrase that triggered it so an operator can
see why a case was routed the way it was.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from shared.events import CaseSubmission, FirstOpinionSource, RoutingContext

CASE_NAMESPACE = uuid.UUID("6f2b1c3e-6a53-4c1b-9d0e-2d8f0e8a7c11")

# Stages a case goes through, in order; intake's status view only moves forward.
STAGES = (
    "received",
    "awaiting_authorization",
    "accepted",
    "records_complete",
    "assigned",
    "report_submitted",
    "report_ready",
    "delivered",
)


def case_id_for(tenant_id: str, external_id: str) -> str:
    """The same submission (tenant + the integrator's reference) is the same case."""
    return "case-" + uuid.uuid5(CASE_NAMESPACE, f"{tenant_id}\x1f{external_id}").hex[:20]


def submission_fingerprint(submission: CaseSubmission) -> str:
    return hashlib.sha256(submission.model_dump_json().encode()).hexdigest()


def stage_rank(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else -1


def missing_authorizations(submission: CaseSubmission) -> list[str]:
    """Providers whose release the patient has not yet authorized."""
    return [r.provider_id for r in submission.records if not r.authorized]


@dataclass(frozen=True)
class Finding:
    """A signal or an inference, with the phrase that triggered it."""

    name: str
    reason: str


# (subspecialty, pattern) — first the specific, then the general.
SUBSPECIALTY_RULES: tuple[tuple[str, str], ...] = (
    ("breast_imaging", r"\b(mammogra\w*|breast (mri|ultrasound|imaging)|bi-?rads)\b"),
    (
        "neuroradiology",
        r"\b(brain|head|spine|spinal|skull base|posterior fossa|brachial plexus|pituitary)\b"
        r"|\bneuro\w*",
    ),
    (
        "musculoskeletal_radiology",
        r"\b(knee|shoulder|hip|ankle|wrist|elbow|joint|menisc\w*|rotator cuff)\b",
    ),
    (
        "body_imaging",
        r"\b(abdom\w*|pelvi\w*|liver|hepat\w*|kidney|renal|pancrea\w*|prostate|adrenal)\b",
    ),
    ("pathology", r"\b(biopsy|histolog\w*|patholog\w*|slides?|cytolog\w*)\b"),
)
ONCOLOGY_SITES: tuple[tuple[str, str], ...] = (
    ("oncology_genitourinary", r"\b(prostate|bladder|renal cell|kidney cancer)\b"),
    ("oncology_breast", r"\bbreast\b"),
    ("oncology_thoracic", r"\b(lung|thoracic|nsclc)\b"),
    ("oncology_neuro", r"\b(glioma|glioblastoma|brain tumou?r)\b"),
)
CANCER = r"\b(cancer|carcinoma|malignan\w*|tumou?r|lymphoma|sarcoma|metasta\w*|psa)\b"


def infer_subspecialties(text: str) -> list[Finding]:
    """The subspecialties the question needs, each with the words that chose it."""
    lowered = text.lower()
    found = [
        Finding(name, f"matched '{m.group(0)}'")
        for name, pattern in SUBSPECIALTY_RULES
        if (m := re.search(pattern, lowered))
    ]
    if cancer := re.search(CANCER, lowered):
        site = next(
            (
                Finding(n, f"cancer term '{cancer.group(0)}' at site '{m.group(0)}'")
                for n, p in ONCOLOGY_SITES
                if (m := re.search(p, lowered))
            ),
            Finding("oncology_general", f"cancer term '{cancer.group(0)}'"),
        )
        found.append(site)
    return found or [Finding("general_internal_medicine", "no subspecialty-specific terms")]


def routing_for(submission: CaseSubmission, subspecialties: list[str]) -> RoutingContext:
    fo = submission.first_opinion
    return RoutingContext(
        subspecialties=subspecialties,
        urgency=submission.urgency,
        service_tier=submission.service_tier,
        jurisdiction=submission.patient.jurisdiction,
        first_opinion=FirstOpinionSource(
            clinician_id=fo.clinician_id, institution=fo.institution, affiliations=fo.affiliations
        ),
    )

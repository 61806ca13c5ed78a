"""Intake's domain rules: case identity, authorization, subspecialty inference."""

import pytest

from services.intake import domain
from shared.events import CaseSubmission


def submission(**over: object) -> CaseSubmission:
    base: dict[str, object] = {
        "external_id": "ext-1",
        "patient": {"name": "A B", "birth_date": "1970-01-01", "jurisdiction": "US-CA"},
        "question": "Second opinion on knee MRI, meniscal tear?",
        "first_opinion": {"diagnosis": "Meniscal tear"},
        "records": [
            {"provider_id": "p1", "patient_id": "1", "kinds": ["imaging"], "authorized": True},
            {"provider_id": "p2", "patient_id": "2", "kinds": ["notes"], "authorized": False},
        ],
    }
    base.update(over)
    return CaseSubmission.model_validate(base)


def test_same_tenant_and_reference_is_the_same_case() -> None:
    assert domain.case_id_for("t1", "x") == domain.case_id_for("t1", "x")
    assert domain.case_id_for("t1", "x") != domain.case_id_for("t2", "x")
    assert domain.case_id_for("t1", "x") != domain.case_id_for("t1", "y")


def test_fingerprint_changes_with_content() -> None:
    a = submission()
    b = submission(question="Second opinion on shoulder MRI, rotator cuff tear?")
    assert domain.submission_fingerprint(a) == domain.submission_fingerprint(submission())
    assert domain.submission_fingerprint(a) != domain.submission_fingerprint(b)


def test_missing_authorizations_lists_unauthorized_providers() -> None:
    assert domain.missing_authorizations(submission()) == ["p2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Second opinion on brain MRI: enhancing lesion in the posterior fossa", "neuroradiology"),
        ("Knee MRI: is this a complex meniscal tear?", "musculoskeletal_radiology"),
        ("CT abdomen: indeterminate liver lesion", "body_imaging"),
        ("Screening mammogram BI-RADS 4 calcifications", "breast_imaging"),
        ("Core biopsy of the thyroid nodule: please re-review the slides", "pathology"),
        (
            "Second opinion on prostate MRI: concerning lesion in left peripheral zone, PSA 6.4",
            "oncology_genitourinary",
        ),
    ],
)
def test_subspecialty_inferred_from_the_question(text: str, expected: str) -> None:
    found = domain.infer_subspecialties(text)
    assert expected in [f.name for f in found]
    assert all(f.reason for f in found)


def test_no_specific_terms_falls_back_to_internal_medicine() -> None:
    found = domain.infer_subspecialties("Persistent fatigue despite treatment for months")
    assert [f.name for f in found] == ["general_internal_medicine"]


def test_stage_rank_orders_the_pipeline() -> None:
    assert (
        domain.stage_rank("accepted")
        < domain.stage_rank("assigned")
        < domain.stage_rank("delivered")
    )
    assert domain.stage_rank("nonsense") == -1

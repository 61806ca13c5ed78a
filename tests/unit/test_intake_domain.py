"""Intake's domain rules: case identity, authorization, triage signals, urgency,
subspecialty inference, earlier opinions and the doctor-shopping hold — with
cases written as referring clinicians and radiologists write them."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from services.intake import domain
from shared.events import CaseSubmission
from shared.vocabulary import Subspecialty

TODAY = date(2026, 11, 2)


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


def opinion(diagnosis: str, report: str = "", plan: str = "") -> dict[str, str]:
    return {"diagnosis": diagnosis, "report_text": report, "treatment_plan": plan}


def needs(question: str) -> list[domain.SubspecialtyFinding]:
    """The reviewers a question alone brings in (the first opinion says nothing)."""
    return domain.infer_subspecialties(
        submission(question=question, first_opinion=opinion("See the records"))
    )


def signals(s: CaseSubmission) -> dict[str, str]:
    return {f.name: f.reason for f in domain.triage_signals(s)}


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


# ---------------------------------------------------------------- subspecialty


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Second opinion on brain MRI: enhancing lesion in the posterior fossa", "neuroradiology"),
        ("Cervical spine MRI: is there cord signal change at C5-6?", "neuroradiology"),
        ("Knee MRI: is this a complex meniscal tear?", "musculoskeletal_radiology"),
        ("Shoulder MRI read as full-thickness rotator cuff tear", "musculoskeletal_radiology"),
        ("CT abdomen: indeterminate liver lesion", "body_imaging"),
        ("Screening mammogram BI-RADS 4 calcifications", "breast_imaging"),
        ("Chest CT: 9 mm solid pulmonary nodule, growing since last year", "thoracic_imaging"),
        ("Core biopsy of the thyroid nodule: please re-review the slides", "pathology"),
        ("Prostate biopsy Gleason 3+4: is it really grade group 2?", "pathology"),
        (
            "Second opinion on prostate MRI: concerning lesion in left peripheral zone, PSA 6.4",
            "oncology_genitourinary",
        ),
        ("Invasive ductal carcinoma of the left breast: is lumpectomy enough?", "oncology_breast"),
        ("Stage IIIA NSCLC, surgery or chemoradiation?", "oncology_thoracic"),
        # A blood cancer is treated by haematology-oncology (was: oncology_general).
        ("Diffuse large B-cell lymphoma, second-line options", "hematology_oncology"),
    ],
)
def test_subspecialty_inferred_from_the_question(text: str, expected: str) -> None:
    found = needs(text)
    assert expected in [f.name for f in found]
    assert all(f.reason for f in found)


def test_a_case_can_need_several_subspecialties() -> None:
    found = needs(
        "Prostate MRI PI-RADS 5 and biopsy Gleason 4+4: please re-read and re-review slides"
    )
    names = [f.name for f in found]
    assert {"body_imaging", "pathology", "oncology_genitourinary"} <= set(names)
    onc = next(f for f in found if f.name == "oncology_genitourinary")
    assert "prostate" in onc.reason


def test_no_specific_terms_falls_back_to_internal_medicine() -> None:
    found = needs("Persistent fatigue despite treatment for months")
    assert [f.name for f in found] == ["general_internal_medicine"]


# ---------------------------------------------------------------- triage signals


@pytest.mark.parametrize(
    ("report", "phrase"),
    [
        ("Small focus of enhancement; cannot exclude low-grade glioma.", "cannot exclude"),
        ("Nonspecific white matter hyperintensities.", "nonspecific"),
        ("Findings indeterminate. Recommend clinical correlation.", "indeterminate"),
        ("Subtle signal, may represent early avascular necrosis.", "may represent"),
    ],
)
def test_ambiguous_report_wording(report: str, phrase: str) -> None:
    s = submission(first_opinion=opinion("Uncertain", report))
    assert phrase in signals(s)["ambiguous_report"].lower()


def test_serious_diagnosis() -> None:
    s = submission(first_opinion=opinion("Glioblastoma, IDH wild-type"))
    assert "glioblastoma" in signals(s)["serious_diagnosis"].lower()


@pytest.mark.parametrize(
    "plan", ["Radical prostatectomy", "Whole-brain radiation", "Posterior spinal fusion L4-S1"]
)
def test_irreversible_or_invasive_treatment(plan: str) -> None:
    s = submission(first_opinion=opinion("Something", plan=plan))
    assert "irreversible_treatment" in signals(s)


def test_persistent_symptoms_from_text_or_status() -> None:
    s = submission(question="Low back pain persistent despite treatment for 8 months, MRI?")
    assert "persistent" in signals(s)["persistent_symptoms"]
    s = submission(symptoms_status="persistent")
    assert "symptoms_status is persistent" in signals(s)["persistent_symptoms"]


def test_rare_condition() -> None:
    s = submission(first_opinion=opinion("Suspected rare condition: Erdheim-Chester disease"))
    assert "rare_condition" in signals(s)


@pytest.mark.parametrize(
    "text",
    [
        "Skull base lesion abutting the clivus",
        "Posterior fossa mass in a child",
        "Brachial plexus MRI after a fall: avulsion?",
        "Post-surgical pelvis after abdominoperineal resection: recurrence or scar?",
    ],
)
def test_complex_anatomy(text: str) -> None:
    assert "complex_anatomy" in signals(submission(question=text))


def test_prior_studies_the_first_reader_lacked() -> None:
    s = submission(first_opinion=opinion("Nodule", "Comparison: none. 6 mm nodule."))
    assert "prior_studies_not_compared" in signals(s)


def test_imaging_that_does_not_match_symptoms() -> None:
    s = submission(question="Lumbar MRI is read as mild but it does not match her symptoms")
    assert "imaging_symptom_mismatch" in signals(s)


def test_conflicting_opinions_from_text_and_from_earlier_opinions() -> None:
    s = submission(question="Two surgeons gave conflicting opinions on the knee: repair or not?")
    assert "conflicting_opinions" in signals(s)
    s = submission(earlier_opinions=[{"reference": "ext-0", "diagnosis": "Degenerative meniscus"}])
    assert "ext-0" in signals(s)["conflicting_opinions"]
    same = submission(earlier_opinions=[{"reference": "ext-0", "diagnosis": "meniscal tear."}])
    assert "conflicting_opinions" not in signals(same)


@pytest.mark.parametrize(
    "report",
    [
        "Simple renal cyst, Bosniak I. No follow-up needed.",
        "Stable liver hemangioma, unchanged from 2019.",
    ],
)
def test_common_benign_incidental_finding_is_low_value(report: str) -> None:
    s = submission(first_opinion=opinion("Incidental finding", report))
    found = domain.triage_signals(s)
    assert "benign_incidental_finding" in [f.name for f in found]
    assert domain.second_opinion_value(found) == "low"


def test_normal_report_with_resolved_symptoms_is_low_value() -> None:
    s = submission(
        first_opinion=opinion("Normal", "Unremarkable MRI of the brain."),
        symptoms_status="resolved",
    )
    found = domain.triage_signals(s)
    assert [f.name for f in found] == ["normal_report_resolved_symptoms"]
    assert domain.second_opinion_value(found) == "low"
    # The same normal report while symptoms persist is not low value.
    persistent = submission(
        first_opinion=opinion("Normal", "Unremarkable MRI of the brain."),
        symptoms_status="persistent",
    )
    assert domain.second_opinion_value(domain.triage_signals(persistent)) == "high"


def test_plain_case_has_no_signals() -> None:
    found = domain.triage_signals(submission())
    assert found == [] and domain.second_opinion_value(found) == "standard"


# ---------------------------------------------------------------- urgency


def test_urgency_is_what_was_requested_by_default() -> None:
    assert domain.assess_urgency(submission(urgency="priority"), TODAY) == (
        "priority",
        "requested priority",
    )


@pytest.mark.parametrize(("days", "expected"), [(2, "urgent"), (10, "priority"), (40, "routine")])
def test_treatment_about_to_start_raises_urgency(days: int, expected: str) -> None:
    start = (TODAY + timedelta(days=days)).isoformat()
    urgency, reason = domain.assess_urgency(submission(treatment_start_date=start), TODAY)
    assert urgency == expected
    if expected != "routine":
        assert f"treatment starts in {days}" in reason


def test_urgent_wording_and_never_lowered() -> None:
    s = submission(question="MRI thoracic spine: metastatic cord compression? Surgery consult")
    assert domain.assess_urgency(s, TODAY)[0] == "urgent"
    s = submission(urgency="urgent", treatment_start_date="2027-06-01")
    assert domain.assess_urgency(s, TODAY) == ("urgent", "requested urgent")


# ---------------------------------------------------------------- earlier opinions, holds


def test_third_opinion_tie_break_is_normal_and_a_long_chain_is_flagged() -> None:
    assert domain.opinion_chain(submission()) is None
    one = submission(earlier_opinions=[{"reference": "ext-0"}])
    tie = domain.opinion_chain(one)
    assert tie is not None and tie.name == "third_opinion_tie_break"
    many = submission(earlier_opinions=[{"reference": "a"}, {"reference": "b"}])
    chain = domain.opinion_chain(many)
    assert chain is not None and chain.name == "long_opinion_chain" and "opinion 4" in chain.reason


def test_earlier_opinions_link_to_known_cases() -> None:
    s = submission(earlier_opinions=[{"reference": "ext-0"}, {"reference": "elsewhere-9"}])
    assert domain.link_earlier(s, {"ext-0": "case-abc"}) == ["case-abc"]


@pytest.mark.parametrize(
    "question",
    [
        "Need a second opinion so someone will prescribe oxycodone again for my back",
        "My doctor refused to refill my Xanax, please review and renew the prescription",
        "Second opinion on ADHD: I need a higher dose of Adderall",
    ],
)
def test_controlled_substance_requests_are_held_for_human_review(question: str) -> None:
    s = submission(question=question)
    hold = domain.doctor_shopping(s)
    assert hold is not None and "human review" in hold.reason
    assert domain.assess(s, TODAY, {}).stage == "held_for_review"


def test_a_clinical_question_mentioning_opioids_is_not_held() -> None:
    s = submission(question="Chronic pain on opioids: is the spine MRI showing nerve compression?")
    assert domain.doctor_shopping(s) is None


def test_assessment_stage_follows_authorizations() -> None:
    assert domain.assess(submission(), TODAY, {}).stage == "awaiting_authorization"
    records = [{"provider_id": "p1", "patient_id": "1", "kinds": ["imaging"], "authorized": True}]
    assert domain.assess(submission(records=records), TODAY, {}).stage == "accepted"


def test_waiting_reasons_say_what_to_do() -> None:
    assert domain.waiting_reasons("asks 'refill'", ["p2"]) == [
        "held for human review: asks 'refill'",
        "release authorization missing for provider 'p2'",
    ]


def test_stage_rank_orders_the_pipeline() -> None:
    assert (
        domain.stage_rank("held_for_review")
        < domain.stage_rank("awaiting_authorization")
        < domain.stage_rank("accepted")
        < domain.stage_rank("assigned")
        < domain.stage_rank("delivered")
    )
    assert domain.stage_rank("nonsense") == -1


def test_inferred_subspecialties_are_the_shared_vocabulary() -> None:
    """Typed as shared.vocabulary.Subspecialty, with the same wire strings as before."""
    found = needs("Biopsy of a prostate lesion, Gleason 7 cancer")
    assert all(isinstance(f.name, Subspecialty) for f in found)
    # A new cancer diagnosis: the site oncologist first, then pathology; no imaging
    # is asked about, so no radiologist (was: body imaging first, from "prostate").
    assert [f.name.value for f in found] == ["oncology_genitourinary", "pathology"]

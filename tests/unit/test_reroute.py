"""Routing re-checked when the images are known (docs/clinical-rules.md, "The
images"): intake's pure re-check of a case with the studies of records.complete,
and assignment's plan for the case's slots when the needed reviewers change."""

from __future__ import annotations

from datetime import UTC, datetime

from services.assignment import domain as assignment
from services.assignment.operations import apply
from services.intake import clinical
from services.intake import domain as intake
from services.intake.documents import CaseDocument, SubspecialtyRecord
from shared.events import (
    CaseAssigned,
    CaseReassigned,
    CaseRerouted,
    CaseSubmission,
    ManifestItem,
    RecordKind,
    StudySummary,
)
from shared.vocabulary import Subspecialty
from tests.unit.test_assignment_timers import CTX, MONDAY_9, POLICY, pool, reviewer

NOW = datetime(2026, 11, 16, 14, 0, tzinfo=UTC)


def submission(question: str, tier: str = "specialist_opinion") -> CaseSubmission:
    return CaseSubmission.model_validate(
        {
            "external_id": "ext-1",
            "patient": {"name": "A B", "birth_date": "1970-01-01", "jurisdiction": "US-CA"},
            "question": question,
            "first_opinion": {"diagnosis": "See the records"},
            "service_tier": tier,
            "records": [
                {"provider_id": "p1", "patient_id": "1", "kinds": ["imaging"], "authorized": True}
            ],
        }
    )


def study(modality: str, body_part: str = "", description: str = "") -> StudySummary:
    return StudySummary(
        study_uid="1.2.3", modality=modality, body_part=body_part, description=description
    )


def needs(s: CaseSubmission, studies: list[StudySummary] | None = None) -> dict[str, str]:
    return {n.subspecialty.value: n.reason for n in clinical.route(s, studies=studies).needed}


def case(s: CaseSubmission) -> CaseDocument:
    routing = clinical.route(s)
    return CaseDocument.model_validate(
        {
            "_id": "case-1",
            "tenant_id": "t1",
            "external_id": "ext-1",
            "fingerprint": "f",
            "submission": s,
            "subspecialties": [
                SubspecialtyRecord(name=n.subspecialty, reason=n.reason) for n in routing.needed
            ],
            "urgency": "routine",
            "stage": "accepted",
            "stage_rank": 2,
            "created_at": NOW,
            "updated_at": NOW,
        }
    )


# ---------------------------------------------------------------- the clinical rule


def test_chest_ct_that_is_a_heart_study_adds_cardiac_imaging_with_its_reason() -> None:
    s = submission("Please re-read my chest CT: is the report right?")
    assert set(needs(s)) == {"thoracic_imaging"}
    after = needs(s, [study("CT", "HEART", "CT CORONARY ANGIOGRAM")])
    assert set(after) == {"thoracic_imaging", "cardiac_imaging"}
    assert "dicom BodyPartExamined HEART" in after["cardiac_imaging"]
    assert "imaging is central" in after["cardiac_imaging"]


def test_a_site_known_from_the_images_replaces_the_general_radiologist() -> None:
    s = submission("Please re-read my scan.", tier="imaging_reread")
    assert set(needs(s)) == {"radiology"}
    assert set(needs(s, [study("MR", "HEAD")])) == {"neuroradiology"}


def test_the_images_do_not_make_imaging_central() -> None:
    """A cardiology question with a cardiac CT in the records stays a cardiology case."""
    s = submission("Coronary bypass was recommended for three-vessel disease. Is it right?")
    assert needs(s, [study("CT", "HEART")]) == needs(s)


def test_a_study_description_brings_no_specialist_and_no_signal() -> None:
    """The images tell where, not what: 'tumor' in a description is no cancer diagnosis."""
    s = submission("Please re-read my knee MRI: meniscal tear?")
    studies = [study("MR", "KNEE", "MRI KNEE TUMOR PROTOCOL")]
    assert set(needs(s, studies)) == set(needs(s))
    signals = {r.name for r in clinical.route(s, studies=studies).signals}
    assert signals == {r.name for r in clinical.route(s).signals}


def test_dicom_facts_carry_no_context() -> None:
    """'without contrast' in a description negates nothing: the study is of the chest."""
    s = submission("Please re-read my scan.", tier="imaging_reread")
    routing = clinical.route(s, studies=[study("CT", "", "CT WITHOUT CONTRAST OF THE CHEST")])
    chest = [f for f in routing.findings if f.source.startswith("dicom")]
    assert chest and all(f.context == "current" for f in chest)
    assert {n.subspecialty for n in routing.needed} == {Subspecialty.THORACIC_IMAGING}


def test_mammography_modality_names_the_breast() -> None:
    s = submission("Please re-read my scan.", tier="imaging_reread")
    assert set(needs(s, [study("MG")])) == {"breast_imaging"}


# ---------------------------------------------------------------- intake's re-check


def test_recheck_records_added_and_removed_with_their_reasons() -> None:
    doc = case(submission("Please re-read my scan.", tier="imaging_reread"))
    reroute = intake.recheck(doc, [study("CT", "HEART")], NOW)
    assert reroute is not None
    rec = reroute.record
    assert [x.name for x in rec.added] == [Subspecialty.CARDIAC_IMAGING]
    assert [x.name for x in rec.removed] == [Subspecialty.RADIOLOGY]
    assert "no longer needed once the images were known (CT HEART)" in rec.removed[0].reason
    assert rec.images == "CT HEART" and rec.at == NOW
    event = intake.case_rerouted(doc, reroute)
    assert isinstance(event, CaseRerouted)
    assert event.routing.subspecialties == ["cardiac_imaging"]
    assert set(event.added) == {"cardiac_imaging"} and set(event.removed) == {"radiology"}
    # Applied once, the same images change nothing more (a redelivered records.complete).
    assert intake.recheck(reroute.applied(doc), [study("CT", "HEART")], NOW) is None


def test_recheck_is_none_without_images_or_when_they_agree() -> None:
    doc = case(submission("Please re-read my knee MRI: meniscal tear?"))
    assert intake.recheck(doc, [], NOW) is None
    assert intake.recheck(doc, [study("MR", "KNEE")], NOW) is None


def test_studies_are_read_from_every_manifest_item() -> None:
    items = [
        ManifestItem(kind=RecordKind.IMAGING, present=True, studies=[study("CT", "HEART")]),
        ManifestItem(kind=RecordKind.REPORTS, present=True),
    ]
    assert [s.body_part for s in intake.studies_of(items)] == ["HEART"]
    assert intake.images_in_words([study("CT", "HEART", "CTA"), study("CT", "HEART", "CTA")]) == (
        "CT HEART (CTA)"
    )


# ---------------------------------------------------------------- assignment's plan


def slot(sub: str, state: str) -> assignment.Assignment:
    a, _ = assignment.open_assignment(
        "c1", "t1", CTX, sub, MONDAY_9, POLICY, pool(reviewer("a", subspecialties=[sub]))
    )
    return a.model_copy(update={"state": state})


def test_plan_opens_the_new_need_and_withdraws_only_unaccepted_slots() -> None:
    slots = {
        "radiology": slot("radiology", "offered"),
        "body_imaging": slot("body_imaging", "unassignable"),
        "pathology": slot("pathology", "accepted"),
        "thoracic_imaging": slot("thoracic_imaging", "offered"),
    }
    routing = CTX.model_copy(update={"subspecialties": ["thoracic_imaging", "cardiac_imaging"]})
    plan = assignment.reroute_plan(routing, slots)
    assert plan.open == ["cardiac_imaging"]
    assert plan.withdraw == ["radiology", "body_imaging"]
    assert plan.kept == ["pathology"]


def test_plan_reopens_a_withdrawn_slot_needed_again() -> None:
    slots = {"cardiac_imaging": slot("cardiac_imaging", "withdrawn")}
    routing = CTX.model_copy(update={"subspecialties": ["cardiac_imaging"]})
    assert assignment.reroute_plan(routing, slots).open == ["cardiac_imaging"]


def test_withdraw_takes_the_offer_back_and_stops_the_clock() -> None:
    a = slot("radiology", "offered")
    done, events = assignment.withdraw(a, NOW, POLICY, "no longer needed (CT HEART)")
    assert done.state == "withdrawn" and done.reviewer_id is None
    assert done.clock.stopped_at == NOW and done.next_fire_at is None
    assert done.reason == "withdrawn: no longer needed (CT HEART)"
    assert len(events) == 1 and isinstance(events[0], CaseReassigned)
    assert events[0].withdrawn and events[0].from_reviewer_id == "a"
    assert events[0].to_reviewer_id == "" and events[0].assignment_id == a.assignment_id


def test_an_accepted_assignment_is_never_withdrawn() -> None:
    a = slot("radiology", "accepted")
    assert assignment.withdraw(a, NOW, POLICY, "x") == (a, [])


def test_reopen_offers_again_with_a_new_assignment_id() -> None:
    a = slot("cardiac_imaging", "offered")
    gone, _ = assignment.withdraw(a, NOW, POLICY, "x")
    back, events = assignment.reopen(
        gone, CTX, NOW, POLICY, pool(reviewer("b", subspecialties=["cardiac_imaging"]))
    )
    assert back.state == "offered" and back.reviewer_id == "b"
    assert back.assignment_id != a.assignment_id and back.clock.stopped_at is None
    assert [type(e) for e in events] == [CaseAssigned]


def test_operations_view_shows_the_reroute_and_the_withdrawn_slot() -> None:
    rerouted = CaseRerouted(
        case_id="c1",
        tenant_id="t1",
        routing=CTX.model_copy(update={"subspecialties": ["cardiac_imaging"]}),
        added={"cardiac_imaging": "'heart' in the images"},
        removed={"radiology": "no longer needed"},
        rerouted_at=NOW,
    )
    c = apply(None, rerouted, NOW)
    assert c.subspecialties == ["cardiac_imaging"]
    assert "+cardiac_imaging" in c.timeline[-1].detail and "-radiology" in c.timeline[-1].detail

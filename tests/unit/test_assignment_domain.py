"""Matching: subspecialty, independence, licensure, then workload."""

from services.assignment.domain import (
    Reviewer,
    choose_reviewer,
    needed_subspecialties,
)
from shared.events import FirstOpinionSource, RoutingContext, ServiceTier


def reviewer(rid: str, **over: object) -> Reviewer:
    base: dict[str, object] = {
        "reviewer_id": rid,
        "name": rid,
        "subspecialties": ["neuroradiology"],
        "licensed_jurisdictions": ["US-CA"],
        "affiliations": [],
        "capacity": 4,
    }
    base.update(over)
    return Reviewer.model_validate(base)


CTX = RoutingContext(
    subspecialties=["neuroradiology"],
    jurisdiction="US-CA",
    first_opinion=FirstOpinionSource(institution="Lone Star Radiology", affiliations=["UT Health"]),
)


def test_conflict_of_interest_excluded() -> None:
    roster = [reviewer("a", affiliations=["Lone Star Radiology"]), reviewer("b")]
    d = choose_reviewer("neuroradiology", CTX, roster, {})
    assert d.reviewer is not None and d.reviewer.reviewer_id == "b"
    assert "not independent" in d.excluded["a"]


def test_affiliation_match_is_case_insensitive() -> None:
    d = choose_reviewer("neuroradiology", CTX, [reviewer("a", affiliations=["ut health"])], {})
    assert d.reviewer is None and "not independent" in d.excluded["a"]


def test_licensure_respected() -> None:
    roster = [reviewer("a", licensed_jurisdictions=["US-TX"]), reviewer("b")]
    d = choose_reviewer("neuroradiology", CTX, roster, {})
    assert d.reviewer is not None and d.reviewer.reviewer_id == "b"
    assert d.excluded["a"] == "not licensed in US-CA"


def test_least_loaded_chosen_relative_to_capacity() -> None:
    roster = [reviewer("a", capacity=4), reviewer("b", capacity=10)]
    d = choose_reviewer("neuroradiology", CTX, roster, {"a": 2, "b": 3})
    assert d.reviewer is not None and d.reviewer.reviewer_id == "b"  # 3/10 < 2/4


def test_full_reviewers_and_wrong_subspecialty_leave_case_unassignable() -> None:
    roster = [reviewer("a", capacity=1), reviewer("b", subspecialties=["body_imaging"])]
    d = choose_reviewer("neuroradiology", CTX, roster, {"a": 1})
    assert d.reviewer is None
    assert d.excluded == {"a": "at capacity (1/1)", "b": "not a neuroradiology reviewer"}
    assert "no eligible" in d.reason


def test_excluded_by_case_history_and_reason_recorded() -> None:
    roster = [reviewer("a"), reviewer("b", capacity=10)]
    d = choose_reviewer(
        "neuroradiology", CTX, roster, {"b": 9}, {"a": "declined this case earlier"}
    )
    assert d.reviewer is not None and d.reviewer.reviewer_id == "b"
    assert d.excluded == {"a": "declined this case earlier"}
    assert "licensed in US-CA" in d.reason and "load 9/10" in d.reason


def test_one_reviewer_per_needed_subspecialty_whatever_the_tier() -> None:
    """Was: several reviewers only for the multi-specialist tier; who is needed is
    clinical, the tier sets the deadline (docs/clinical-rules.md)."""
    subs = ["pathology", "body_imaging", "oncology_general", "pathology"]
    multi = CTX.model_copy(
        update={"subspecialties": subs, "service_tier": ServiceTier.MULTI_SPECIALIST}
    )
    reread = CTX.model_copy(
        update={"subspecialties": subs, "service_tier": ServiceTier.IMAGING_REREAD}
    )
    assert needed_subspecialties(multi) == ["pathology", "body_imaging", "oncology_general"]
    assert needed_subspecialties(reread) == ["pathology", "body_imaging", "oncology_general"]

"""records_fetch's pure parts: completeness rules, instance checks, the manifest,
clinical summaries, backoff and the multipart reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.records_fetch import domain, multipart
from services.records_fetch.domain import Facts, Requirement, StudyFacts
from shared.events import RecordKind, ServiceTier

R = Requirement


@pytest.mark.parametrize("sub", ["thoracic_imaging", "cardiac_imaging", "nuclear_medicine"])
def test_every_imaging_subspecialty_requires_the_images_and_priors(sub: str) -> None:
    """thoracic_imaging was missing from a local list: such a case needed no images."""
    needed = domain.requirements_for(ServiceTier.SPECIALIST_OPINION, [sub])
    assert {R.ORIGINAL_IMAGES, R.PRIOR_STUDIES, R.ORIGINAL_REPORT} <= set(needed)


@pytest.mark.parametrize(
    ("tier", "subs", "expected"),
    [
        (
            ServiceTier.IMAGING_REREAD,
            ["neuroradiology", "oncology_neuro"],
            {R.ORIGINAL_IMAGES, R.ORIGINAL_REPORT, R.PRIOR_STUDIES},
        ),
        (
            ServiceTier.PATHOLOGY_REREVIEW,
            ["pathology"],
            {R.PATHOLOGY, R.ORIGINAL_REPORT, R.CLINICAL_NOTES},
        ),
        (
            ServiceTier.SPECIALIST_OPINION,
            ["oncology_genitourinary"],
            {
                R.PATHOLOGY,
                R.ORIGINAL_IMAGES,
                R.CLINICAL_NOTES,
                R.TREATMENT_HISTORY,
                R.ORIGINAL_REPORT,
                R.LABS,
            },
        ),
        (
            ServiceTier.SPECIALIST_OPINION,
            ["general_internal_medicine"],
            {R.CLINICAL_NOTES, R.ORIGINAL_REPORT, R.LABS, R.TREATMENT_HISTORY},
        ),
    ],
)
def test_requirements_per_tier_and_subspecialty(
    tier: ServiceTier, subs: list[str], expected: set[Requirement]
) -> None:
    assert set(domain.requirements_for(tier, subs)) == expected


def mr_attrs(**over: object) -> dict[str, object]:
    attrs: dict[str, object] = {
        "SOPInstanceUID": "1.2.3",
        "Modality": "MR",
        "BodyPartExamined": "BRAIN",
        "StudyDate": "20261001",
        "Rows": 64,
        "Columns": 64,
        "BitsAllocated": 16,
        "SamplesPerPixel": 1,
        "_pixel_bytes": 8192,
        "_compressed": False,
    }
    return attrs | over


def test_a_whole_instance_passes_and_records_modality_and_body_part() -> None:
    check = domain.check_instance(mr_attrs(), "1.2.3")
    assert check.ok and check.modality == "MR" and check.body_part == "BRAIN"


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"_pixel_bytes": 4000}, "pixel data truncated"),
        ({"_pixel_bytes": None}, "pixel data missing"),
        ({"SOPInstanceUID": "9.9"}, "differs"),
        ({"Modality": ""}, "no Modality"),
    ],
)
def test_bad_instances_are_caught(over: dict[str, object], problem: str) -> None:
    check = domain.check_instance(mr_attrs(**over), "1.2.3")
    assert not check.ok and any(problem in p for p in check.problems)


def test_compressed_pixel_data_is_not_measured_against_native_size() -> None:
    assert domain.check_instance(mr_attrs(_pixel_bytes=100, _compressed=True), "1.2.3").ok


def study(
    uid: str,
    date: str,
    received: int = 1,
    corrupt: list[str] | None = None,
    mods: list[str] | None = None,
) -> StudyFacts:
    return StudyFacts(
        provider_id="pacs",
        study_uid=uid,
        study_date=date,
        modalities=mods or ["MR"],
        expected=1,
        received=received,
        corrupt=corrupt or [],
    )


REREAD = [R.ORIGINAL_IMAGES, R.PRIOR_STUDIES, R.ORIGINAL_REPORT]
REPORT = {
    RecordKind.REPORTS: [
        domain.ClinicalSummary(resource_type="DiagnosticReport", date="2026-10-05")
    ]
}


def test_manifest_complete_with_current_prior_and_report() -> None:
    facts = Facts(studies=[study("a", "20261001"), study("b", "20240101")], clinical=REPORT)
    manifest = domain.build_manifest(REREAD, facts)
    assert manifest.complete and manifest.received_instances == 2


def test_manifest_names_the_corrupt_instance_and_the_missing_prior() -> None:
    facts = Facts(studies=[study("a", "20261001", received=0, corrupt=["1.2.3"])], clinical=REPORT)
    missing = {i.detail.split(":")[0]: i for i in domain.build_manifest(REREAD, facts).missing}
    assert set(missing) == {"original_images", "prior_studies"}
    assert "corrupt: 1.2.3" in missing["original_images"].detail


def test_manifest_says_why_something_is_missing() -> None:
    facts = Facts(unreachable={"pacs": "down"}, not_requested=[RecordKind.REPORTS])
    details = [i.detail for i in domain.build_manifest(REREAD, facts).missing]
    assert "provider unreachable: pacs" in details[0]
    assert "not requested from any provider" in details[2]


def test_missing_items_read_as_plain_words() -> None:
    """ "no prior study not found" said the opposite of what it meant."""
    facts = Facts(studies=[study("a", "20261001")], clinical=REPORT)
    (prior,) = domain.build_manifest(REREAD, facts).missing
    assert prior.detail == "prior_studies: no prior study found at the provider"
    facts = Facts(not_requested=[RecordKind.IMAGING], clinical=REPORT)
    details = [i.detail for i in domain.build_manifest(REREAD, facts).missing]
    assert "original_images: no study: imaging not requested from any provider" in details
    assert not any("not found" in d for d in details)


def test_slides_are_pathology_not_the_current_radiology_study() -> None:
    slide = study("s", "20270101", mods=["SM"]).model_copy(update={"wsi_instances": 1})
    facts = Facts(studies=[slide, study("a", "20261001")])
    manifest = domain.build_manifest([R.PATHOLOGY, R.ORIGINAL_IMAGES], facts)
    assert manifest.complete
    assert "20261001" in manifest.items[1].detail


def test_a_study_labelled_sm_without_whole_slide_images_is_not_pathology() -> None:
    """Modality SM is what QIDO says; the SOP class of what arrived is what counts."""
    facts = Facts(studies=[study("s", "20270101", mods=["SM"])])
    (item,) = domain.build_manifest([R.PATHOLOGY], facts).items
    assert not item.present and "no VL Whole Slide Microscopy image" in item.detail


def test_glass_slides_requested_are_missing_until_received() -> None:
    requested = Facts(glass_slides_requested=["lab"])
    assert (
        "glass slides requested from lab"
        in domain.build_manifest([R.PATHOLOGY], requested).items[0].detail
    )
    assert domain.build_manifest([R.PATHOLOGY], Facts(glass_slides_received=["lab"])).complete


def test_summaries_keep_dates_doses_and_outcomes() -> None:
    med = domain.summarise_resource(
        {
            "resourceType": "MedicationStatement",
            "medicationCodeableConcept": {"coding": [{"display": "Levetiracetam"}]},
            "effectivePeriod": {"start": "2026-10-06"},
            "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 500, "unit": "mg"}}]}],
        }
    )
    assert (med.text, med.date, med.dose) == ("Levetiracetam", "2026-10-06", "500 mg")
    obs = domain.summarise_resource(
        {
            "resourceType": "Observation",
            "code": {"text": "Hb"},
            "valueQuantity": {"value": 13.2, "unit": "g/dL"},
        }
    )
    assert obs.value == "13.2 g/dL"
    assert (
        domain.clinical_detail([med, obs])
        == "1 MedicationStatement, 1 Observation (2026-10-06..2026-10-06)"
    )


def test_backoff_doubles_is_capped_and_stops_at_the_attempt_cap() -> None:
    policy = domain.RetryPolicy(base_seconds=10, max_delay_seconds=60, max_attempts=4)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert [policy.next_retry(a, now) for a in (1, 2, 3)] == [
        now + timedelta(seconds=10),
        now + timedelta(seconds=20),
        now + timedelta(seconds=40),
    ]
    assert policy.delay(9) == timedelta(seconds=60)
    assert policy.next_retry(4, now) is None


def test_paging_links_must_stay_under_the_registered_base() -> None:
    assert domain.within_base("http://fhir.example/r4/Observation?page=2", "http://fhir.example/r4")
    assert not domain.within_base("http://fhir.example/r4evil/x", "http://fhir.example/r4")
    assert not domain.within_base("http://attacker.example/r4/x", "http://fhir.example/r4")


def test_registry_refuses_unregistered_providers() -> None:
    from shared.errors import UnregisteredEndpoint

    registry = domain.ProviderRegistry(tenants={"t": {"p": domain.ProviderEndpoints()}})
    with pytest.raises(UnregisteredEndpoint):
        registry.lookup("other-tenant", "p")


# ---------------------------------------------------------------- multipart


def body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    out = b""
    for p in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def read_all(data: bytes, chunk: int, boundary: str = "b0undary") -> list[bytes]:
    reader = multipart.MultipartReader(boundary)
    parts: list[bytes] = []
    for i in range(0, len(data), chunk):
        for ev in reader.feed(data[i : i + chunk]):
            if isinstance(ev, multipart.PartStart):
                parts.append(b"")
            elif isinstance(ev, multipart.PartData):
                parts[-1] += ev.data
    reader.close()
    return parts


@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=3),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_multipart_parts_survive_any_chunking(parts: list[bytes], chunk: int) -> None:
    # Binary content may contain CRLF and dashes; only the exact delimiter ends a part.
    assert read_all(body(parts), chunk) == parts


def test_a_cut_off_body_is_reported_truncated() -> None:
    data = body([b"\x00" * 100])
    with pytest.raises(multipart.MultipartError, match="truncated"):
        read_all(data[:60], 7)


def test_boundary_is_read_from_the_content_type() -> None:
    ct = 'multipart/related; type="application/dicom"; boundary=abc-123'
    assert multipart.boundary_of(ct) == "abc-123"
    with pytest.raises(multipart.MultipartError):
        multipart.boundary_of("application/dicom")

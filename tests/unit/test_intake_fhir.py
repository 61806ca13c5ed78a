"""FHIR R4 intake: a ServiceRequest Bundle (or contained resources) mapped to the
native CaseSubmission, and precise errors pointing at the FHIR element."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from services.intake import fhir, handlers
from shared.errors import InvalidInput
from shared.events import CaseSubmission

REPORT = "MRI prostate: 14 mm lesion left peripheral zone, PI-RADS 4. Cannot exclude extension."


def native_case(external_id: str = "ext-1", **over: Any) -> dict[str, Any]:
    """A native submission in the field's words."""
    case: dict[str, Any] = {
        "external_id": external_id,
        "patient": {"name": "Ann Example", "birth_date": "1958-03-02", "jurisdiction": "US-CA"},
        "question": "Second opinion on prostate MRI: concerning lesion in left peripheral zone,"
        " PSA 6.4",
        "first_opinion": {
            "diagnosis": "PI-RADS 4 lesion, likely prostate cancer",
            "treatment_plan": "Radical prostatectomy",
            "report_text": REPORT,
            "institution": "Valley Urology",
        },
        "urgency": "routine",
        "records": [
            {
                "provider_id": "valley-imaging",
                "patient_id": "MRN-1",
                "kinds": ["imaging"],
                "authorized": True,
            },
            {
                "provider_id": "valley-clinic",
                "patient_id": "P-9",
                "kinds": ["notes", "labs"],
                "authorized": True,
            },
        ],
    }
    case.update(over)
    return case


def fhir_bundle(identifier: str = "sr-1", clinic_consent: str = "active") -> dict[str, Any]:
    """A Bundle as an EHR would send it: ServiceRequest, Patient, requester, the first
    opinion (Condition, DiagnosticReport with its performer) and one Consent per provider."""

    def entry(resource: dict[str, Any]) -> dict[str, Any]:
        return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}

    text = base64.b64encode(REPORT.encode()).decode()
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            entry(
                {
                    "resourceType": "ServiceRequest",
                    "id": "sr",
                    "status": "active",
                    "intent": "order",
                    "priority": "urgent",
                    "identifier": [{"system": "urn:ehr:orders", "value": identifier}],
                    "code": {"coding": [{"system": fhir.TIER_SYSTEM, "code": "imaging_reread"}]},
                    "subject": {"reference": "urn:uuid:pat"},
                    "requester": {"reference": "urn:uuid:req"},
                    "reasonReference": [{"reference": "urn:uuid:cond"}],
                    "supportingInfo": [
                        {"reference": "urn:uuid:dr"},
                        {"reference": "urn:uuid:plan"},
                    ],
                    "note": [
                        {
                            "text": "Second opinion on prostate MRI: concerning lesion in left"
                            " peripheral zone, PSA 6.4"
                        }
                    ],
                }
            ),
            entry(
                {
                    "resourceType": "Patient",
                    "id": "pat",
                    "gender": "male",
                    "birthDate": "1958-03-02",
                    "name": [{"given": ["Ann"], "family": "Example"}],
                    "address": [{"country": "US", "state": "CA"}],
                    "identifier": [
                        {
                            "system": "urn:valley:mrn",
                            "value": "MRN-1",
                            "assigner": {"reference": "urn:uuid:org-img"},
                        },
                        {
                            "system": "urn:valley:clinic",
                            "value": "P-9",
                            "assigner": {"reference": "urn:uuid:org-clinic"},
                        },
                    ],
                }
            ),
            entry(
                {
                    "resourceType": "Practitioner",
                    "id": "req",
                    "telecom": [{"system": "email", "value": "dr.treating@example.org"}],
                }
            ),
            entry(
                {
                    "resourceType": "Condition",
                    "id": "cond",
                    "subject": {"reference": "urn:uuid:pat"},
                    "code": {"text": "PI-RADS 4 lesion, likely prostate cancer"},
                }
            ),
            entry(
                {
                    "resourceType": "DiagnosticReport",
                    "id": "dr",
                    "status": "final",
                    "code": {"text": "MRI prostate"},
                    "conclusion": "PI-RADS 4",
                    "performer": [{"reference": "urn:uuid:rad"}, {"reference": "urn:uuid:org-rad"}],
                    "presentedForm": [{"contentType": "text/plain", "data": text}],
                }
            ),
            entry(
                {
                    "resourceType": "Practitioner",
                    "id": "rad",
                    "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "npi-77"}],
                    "name": [{"text": "Dr. First Reader"}],
                }
            ),
            entry({"resourceType": "Organization", "id": "org-rad", "name": "Valley Urology"}),
            entry(
                {
                    "resourceType": "Organization",
                    "id": "org-img",
                    "name": "Valley Imaging",
                    "identifier": [{"value": "valley-imaging"}],
                }
            ),
            entry(
                {
                    "resourceType": "Organization",
                    "id": "org-clinic",
                    "name": "Valley Clinic",
                    "identifier": [{"value": "valley-clinic"}],
                }
            ),
            entry(
                {
                    "resourceType": "CarePlan",
                    "id": "plan",
                    "status": "active",
                    "intent": "plan",
                    "subject": {"reference": "urn:uuid:pat"},
                    "description": "Radical prostatectomy",
                }
            ),
            entry(consent("c1", "active", "urn:uuid:org-img", ["ImagingStudy"])),
            entry(
                consent(
                    "c2",
                    clinic_consent,
                    "urn:uuid:org-clinic",
                    ["DocumentReference", "Observation"],
                )
            ),
        ],
    }


def consent(cid: str, status: str, org: str, classes: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": status,
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "urn:uuid:pat"},
        "organization": [{"reference": org}],
        "provision": {"type": "permit", "class": [{"code": c} for c in classes]},
    }


def test_bundle_maps_to_the_native_case() -> None:
    s = handlers.validate_fhir(fhir_bundle())
    assert s.external_id == "sr-1"
    assert s.patient.name == "Ann Example" and s.patient.sex == "male"
    assert s.patient.jurisdiction == "US-CA" and s.patient.birth_date == "1958-03-02"
    assert s.question.startswith("Second opinion on prostate MRI")
    assert s.first_opinion.diagnosis == "PI-RADS 4 lesion, likely prostate cancer"
    assert s.first_opinion.report_text == REPORT
    assert s.first_opinion.clinician_id == "npi-77"
    assert s.first_opinion.institution == "Valley Urology"
    assert s.urgency == "priority" and s.service_tier == "imaging_reread"
    assert s.treating_clinician_email == "dr.treating@example.org"
    assert [(r.provider_id, r.patient_id, r.authorized) for r in s.records] == [
        ("valley-imaging", "MRN-1", True),
        ("valley-clinic", "P-9", True),
    ]
    assert s.records[1].kinds == ["labs", "notes"]


def test_fhir_and_native_forms_of_one_case_are_the_same_submission() -> None:
    native = native_case("sr-1", urgency="priority", service_tier="imaging_reread")
    native["patient"] = {**native["patient"], "sex": "male"}
    native["first_opinion"] = {
        **native["first_opinion"],
        "clinician_id": "npi-77",
        "clinician_name": "Dr. First Reader",
        "affiliations": ["Valley Urology"],
    }
    native["patient"]["identifiers"] = [
        {"system": "urn:valley:mrn", "value": "MRN-1"},
        {"system": "urn:valley:clinic", "value": "P-9"},
    ]
    native["records"][1]["kinds"] = ["labs", "notes"]
    native["treating_clinician_email"] = "dr.treating@example.org"
    native["request_reference"] = "urn:ehr:orders|sr-1"  # the identifier as a FHIR token
    assert handlers.validate_fhir(fhir_bundle()) == CaseSubmission.model_validate(native)


def test_consent_not_yet_active_means_not_authorized() -> None:
    s = handlers.validate_fhir(fhir_bundle(clinic_consent="proposed"))
    assert {r.provider_id: r.authorized for r in s.records} == {
        "valley-imaging": True,
        "valley-clinic": False,
    }


def test_service_request_with_contained_resources() -> None:
    """The same case as one ServiceRequest whose resources are contained ('#id')."""
    text = json.dumps([e["resource"] for e in fhir_bundle()["entry"]])
    resources = json.loads(text.replace('"urn:uuid:', '"#'))
    sr = resources.pop(0)
    sr["contained"] = resources
    s = handlers.validate_fhir(sr)
    assert s == handlers.validate_fhir(fhir_bundle())


def _errors(payload: Any) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        handlers.validate_fhir(payload)
    return [f"{e['loc']}|{e['type']}" for e in info.value.errors]


def test_wrong_resource_type_is_refused() -> None:
    assert _errors({"resourceType": "Patient", "id": "x"}) == ["resourceType|resource_type"]


def test_missing_identifier_defaults_to_the_id_else_points_at_the_service_request() -> None:
    b = fhir_bundle()
    del b["entry"][0]["resource"]["identifier"]
    s = handlers.validate_fhir(b)
    assert (s.external_id, s.request_reference) == ("sr", "ServiceRequest/sr")
    del b["entry"][0]["resource"]["id"]
    assert _errors(b) == ["Bundle.entry[0].resource.identifier|required"]


def test_schema_error_of_the_fhir_model_is_located() -> None:
    b = fhir_bundle()
    b["entry"][0]["resource"]["subject"] = "Patient/1"  # a Reference must be an object
    errors = _errors(b)
    assert errors and all(e.startswith("Bundle.entry[0].resource") for e in errors)


def test_mapped_field_error_names_the_fhir_source() -> None:
    b = fhir_bundle()
    del b["entry"][1]["resource"]["address"]
    assert _errors(b) == [
        "Bundle.entry[1].resource.address (patient.jurisdiction)|string_too_short"
    ]


def test_case_without_consents_has_no_records() -> None:
    b = fhir_bundle()
    b["entry"] = [e for e in b["entry"] if e["resource"]["resourceType"] != "Consent"]
    assert _errors(b) == ["Bundle.entry[0].resource|required"]


def test_content_type_detection() -> None:
    assert fhir.is_fhir_content_type("application/fhir+json; fhirVersion=4.0")
    assert not fhir.is_fhir_content_type("application/json")


def test_an_entry_of_a_type_without_contained_resources_is_read() -> None:
    """Found by the fuzzer: a bare `Resource` entry has no `contained`; reading it was a 500."""
    bundle = fhir_bundle()
    bundle["entry"].append({"resource": {"resourceType": "Resource", "id": "bare"}})
    assert handlers.validate_fhir(bundle).external_id == "sr-1"

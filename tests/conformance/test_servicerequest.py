"""FHIR R4 ServiceRequests as integrators send them, written from the R4
specification and the shapes of its published examples (the diagnostic-imaging
order `servicerequest-example-di`, the physiotherapy order `example2` with its
contained Condition and Provenance, `basedOn` a CarePlan): each is accepted, with
the documented defaults, or refused with one complete OperationOutcome (every
issue, its FHIRPath, readable words), validated by `fhir.resources` strictly.
The case's progress as a Task is validated the same way."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.task import Task

from services.intake import fhir_out, handlers
from services.intake.app import create_service
from services.intake.documents import RejectionDocument
from services.intake.progress import Progress
from services.intake.settings import IntakeSettings
from services.intake.store import IntakeStore
from shared.clock import ManualClock
from shared.envelope import OutboxEntry
from shared.errors import InvalidInput
from tests.fakes import MemoryAuditCollection

SNOMED, LOINC, ICD10 = (
    "http://snomed.info/sct",
    "http://loinc.org",
    "http://hl7.org/fhir/sid/icd-10-cm",
)
DEMO = {"Authorization": "Bearer demo-int.dev-secret-demo-int"}
FHIR_JSON = {"content-type": "application/fhir+json"}
PYTHON_WORDS = (
    "Input should",
    "String should",
    "dictionary",
    "instance of",
    "Field required",
    "Invalid JSON",
    "Value error",
)


def chest_ct_order() -> dict[str, Any]:
    """The shape of `servicerequest-example-di` in R4: a chest CT ordered to check for
    metastatic disease; the patient and the requester are references to a server the
    router cannot read, and there is no identifier, no report, no consent."""
    return {
        "resourceType": "ServiceRequest",
        "id": "di",
        "status": "active",
        "intent": "original-order",
        "code": {"coding": [{"system": LOINC, "code": "24627-2"}], "text": "Chest CT"},
        "subject": {"reference": "Patient/dicom"},
        "occurrenceDateTime": "2013-05-08T09:33:27+07:00",
        "requester": {"reference": "Practitioner/example", "display": "Dr. Adam Careful"},
        "reasonCode": [{"text": "Check for metastatic disease"}],
    }


def physiotherapy_order() -> dict[str, Any]:
    """The shape of `example2` in R4: a completed physiotherapy order with a
    contained Condition (reasonReference) and Provenance (relevantHistory), based on
    a GP-visit CarePlan (basedOn: the plan it fulfils, not an opinion)."""
    return {
        "resourceType": "ServiceRequest",
        "id": "physiotherapy",
        "contained": [
            {
                "resourceType": "Provenance",
                "id": "signature",
                "target": [{"reference": "ServiceRequest/physiotherapy/_history/1"}],
                "recorded": "2017-02-01T17:23:07Z",
                "agent": [{"who": {"reference": "Practitioner/example"}}],
            },
            {
                "resourceType": "Condition",
                "id": "cystic-fibrosis",
                "code": {
                    "coding": [
                        {
                            "system": ICD10,
                            "code": "E84.0",
                            "display": "Cystic fibrosis with pulmonary manifestations",
                        }
                    ],
                    "text": "Cystic Fibrosis",
                },
                "subject": {"reference": "Patient/example"},
            },
        ],
        "identifier": [{"system": "http://goodhealth.org/placer-ids", "value": "20170201-0001"}],
        "basedOn": [{"reference": "CarePlan/gpvisit"}],
        "status": "completed",
        "intent": "order",
        "code": {
            "coding": [{"system": SNOMED, "code": "34431008", "display": "Physiotherapy of chest"}]
        },
        "subject": {"reference": "Patient/example"},
        "authoredOn": "2017-02-01T17:23:07Z",
        "requester": {"reference": "Practitioner/example", "display": "Dr Adam Careful"},
        "reasonReference": [{"reference": "#cystic-fibrosis"}],
        "relevantHistory": [{"reference": "#signature"}],
    }


def patient(pid: str = "pat") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"given": ["Ann"], "family": "Example"}],
        "gender": "female",
        "birthDate": "1961-04-09",
        "address": [{"country": "US", "state": "CA"}],
        "identifier": [
            {"system": "urn:valley:mrn", "value": "MRN-7", "assigner": {"reference": "#org-img"}}
        ],
    }


def provider() -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": "org-img",
        "name": "Valley Imaging",
        "identifier": [{"value": "valley-imaging"}],
    }


def consent(org: str = "#org-img", patient_ref: str = "#pat") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": "release",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": patient_ref},
        "organization": [{"reference": org}],
        "provision": {
            "type": "permit",
            "class": [{"code": "ImagingStudy"}, {"code": "DiagnosticReport"}],
        },
    }


def report(rid: str, conclusion: str, ident: str, issued: str) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "identifier": [{"system": "urn:valley:reports", "value": ident}],
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "24627-2"}], "text": "Chest CT"},
        "subject": {"reference": "#pat"},
        "issued": issued,
        "conclusion": conclusion,
    }


def chest_ct_second_opinion() -> dict[str, Any]:
    """The chest CT order made a second-opinion request: the same coded order, with
    the patient, the report under review (supportingInfo), an earlier opinion, the
    release for the imaging provider, all contained."""
    sr = chest_ct_order()
    sr["identifier"] = [{"system": "urn:valley:orders", "value": "so-4471"}]
    sr["subject"] = {"reference": "#pat"}
    sr["category"] = [{"coding": [{"system": SNOMED, "code": "363679005", "display": "Imaging"}]}]
    sr["reasonCode"] = [
        {
            "coding": [
                {
                    "system": SNOMED,
                    "code": "128462008",
                    "display": "Secondary malignant neoplastic disease",
                }
            ],
            "text": "Check for metastatic disease",
        }
    ]
    sr["bodySite"] = [
        {"coding": [{"system": SNOMED, "code": "51185008", "display": "Thoracic structure"}]}
    ]
    sr["supportingInfo"] = [{"reference": "#first"}, {"reference": "#earlier"}]
    sr["contained"] = [
        patient(),
        provider(),
        consent(),
        report(
            "first",
            "Indeterminate 9 mm nodule right lower lobe; cannot exclude metastasis",
            "r-2",
            "2026-04-02T10:00:00Z",
        ),
        report("earlier", "Benign-appearing 8 mm nodule", "r-1", "2025-10-01T10:00:00Z"),
    ]
    return sr


def as_bundle(sr: dict[str, Any], kind: str) -> dict[str, Any]:
    """The request and its contained resources as Bundle entries (`urn:uuid:` refs)."""
    sr = copy.deepcopy(sr)
    contained = sr.pop("contained", [])
    text = json.dumps([sr, *contained]).replace('"#', '"urn:uuid:')
    resources = json.loads(text)
    entries = []
    for r in resources:
        entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{r['id']}", "resource": r}
        if kind == "transaction":
            entry["request"] = {"method": "POST", "url": r["resourceType"]}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def refusal(payload: dict[str, Any]) -> dict[str, Any]:
    """The OperationOutcome a FHIR client gets, strictly valid R4."""
    with pytest.raises(InvalidInput) as info:
        handlers.validate_fhir(payload)
    outcome = fhir_out.operation_outcome(422, "Invalid input", info.value.detail, info.value.errors)
    OperationOutcome.model_validate(outcome)  # raises on anything not R4
    for issue in outcome["issue"]:
        text = issue["details"]["text"]
        assert not any(w in text for w in PYTHON_WORDS), text
    return outcome


def issues(outcome: dict[str, Any]) -> set[tuple[str, str]]:
    return {(i["code"], (i.get("expression") or [""])[0]) for i in outcome["issue"]}


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize("form", ["contained", "transaction", "collection"])
def test_a_coded_second_opinion_request_is_accepted_in_every_form(form: str) -> None:
    sr = chest_ct_second_opinion()
    payload = sr if form == "contained" else as_bundle(sr, form)
    s = handlers.validate_fhir(payload)
    assert s.external_id == "so-4471"
    assert s.request_reference == "urn:valley:orders|so-4471"
    assert s.question == "Check for metastatic disease"
    assert s.first_opinion.diagnosis.startswith("Indeterminate 9 mm nodule")
    assert [(c.system, c.code) for c in s.procedures] == [(LOINC, "24627-2"), (SNOMED, "363679005")]
    assert [(c.code, c.display) for c in s.diagnoses] == [
        ("128462008", "Secondary malignant neoplastic disease")
    ]
    assert [c.code for c in s.body_sites] == ["51185008"]
    # The second DiagnosticReport of supportingInfo is an earlier opinion.
    assert [(e.reference, e.given_on) for e in s.earlier_opinions] == [("r-1", "2025-10-01")]
    assert [(r.provider_id, r.patient_id, r.authorized) for r in s.records] == [
        ("valley-imaging", "MRN-7", True)
    ]


def test_based_on_is_the_plan_fulfilled_and_relevant_history_the_opinions() -> None:
    """example2's `basedOn: CarePlan/gpvisit` is what the request fulfils, never an
    earlier opinion (it read as a tie-break third opinion); an opinion is found
    through relevantHistory's Provenance when it targets a DiagnosticReport."""
    sr = physiotherapy_order()
    sr["status"] = "active"
    sr["subject"] = {"reference": "#pat"}
    sr["contained"] += [patient(), provider(), consent()]
    s = handlers.validate_fhir(sr)
    assert s.earlier_opinions == []
    assert s.first_opinion.diagnosis == "Cystic Fibrosis"  # reasonReference Condition
    assert [(c.system, c.code) for c in s.diagnoses] == [(ICD10, "E84.0")]
    assert s.external_id == "20170201-0001"

    sr["contained"].append(report("prior", "Mild bronchiectasis", "r-9", "2024-01-01T00:00:00Z"))
    sr["contained"][0]["target"].append({"reference": "#prior"})
    s = handlers.validate_fhir(sr)
    assert [e.reference for e in s.earlier_opinions] == ["r-9"]


def test_a_request_without_identifier_takes_its_id() -> None:
    sr = chest_ct_second_opinion()
    del sr["identifier"]
    s = handlers.validate_fhir(sr)
    assert (s.external_id, s.request_reference) == ("di", "ServiceRequest/di")


# ---------------------------------------------------------------- refused, completely


def test_the_chest_ct_order_as_published_is_refused_with_every_issue_at_once() -> None:
    outcome = refusal(chest_ct_order())
    assert issues(outcome) == {
        ("required", "ServiceRequest.subject"),
        ("required", "ServiceRequest"),  # no Consent: no provider to fetch from
        ("required", "ServiceRequest.supportingInfo"),  # no first opinion
    }
    texts = " ".join(i["details"]["text"] for i in outcome["issue"])
    assert "must reference a Patient carried in the submission" in texts
    assert "no first opinion" in texts


def test_the_physiotherapy_order_as_published_is_refused_with_every_issue_at_once() -> None:
    outcome = refusal(physiotherapy_order())
    assert issues(outcome) == {
        ("business-rule", "ServiceRequest.status"),
        ("required", "ServiceRequest.subject"),
        ("required", "ServiceRequest"),
    }
    (status,) = [i for i in outcome["issue"] if i["expression"] == ["ServiceRequest.status"]]
    assert "is 'completed'" in status["details"]["text"]


def test_a_proposal_and_broken_elements_in_a_bundle_are_all_located() -> None:
    bundle = as_bundle(chest_ct_second_opinion(), "collection")
    sr, pat = bundle["entry"][0]["resource"], bundle["entry"][1]["resource"]
    sr["intent"] = "proposal"
    del pat["address"]
    del pat["birthDate"]
    sr["reasonCode"] = [{"text": "short"}]  # the question must say what is asked
    outcome = refusal(bundle)
    assert issues(outcome) == {
        ("business-rule", "Bundle.entry[0].resource.intent"),
        ("invalid", "Bundle.entry[1].resource.birthDate"),
        ("invalid", "Bundle.entry[1].resource.address"),
        ("invalid", "Bundle.entry[0].resource.note"),
    }
    texts = [i["details"]["text"] for i in outcome["issue"]]
    assert any(t.endswith("(case field patient.jurisdiction)") for t in texts)


def test_a_model_error_is_located_with_fhirpath_and_readable() -> None:
    sr = chest_ct_second_opinion()
    sr["subject"] = "Patient/1"  # a Reference is an object
    outcome = refusal(sr)
    (issue,) = outcome["issue"]
    assert issue["code"] == "structure" and issue["expression"] == ["ServiceRequest.subject"]
    assert "wrong shape" in issue["details"]["text"]


# ---------------------------------------------------------------- over HTTP


class Rejections(IntakeStore):
    """Rejections kept in memory: a refused request stores no case."""

    def __init__(self) -> None:
        self.kept: list[RejectionDocument] = []

    async def record_rejection(
        self, rejection: RejectionDocument, outbox: list[OutboxEntry]
    ) -> bool:
        self.kept.append(rejection)
        return True


@pytest_asyncio.fixture(loop_scope="session")
async def http(tmp_path: Any) -> Any:
    service = create_service(IntakeSettings(trace_dir=tmp_path), ManualClock(), store=Rejections())
    service.audit.collection = MemoryAuditCollection()  # type: ignore[assignment]
    transport = httpx.ASGITransport(app=service.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        yield client
    service.tracer_provider.shutdown()


@pytest.mark.parametrize("path", ["/v1/cases", "/v1/fhir/ServiceRequest"])
async def test_a_fhir_client_is_refused_with_an_operation_outcome(http: Any, path: str) -> None:
    r = await http.post(path, content=json.dumps(chest_ct_order()), headers={**DEMO, **FHIR_JSON})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/fhir+json"
    outcome = OperationOutcome.model_validate(r.json())
    assert len(outcome.issue) == 3
    native = await http.post("/v1/cases", json={"external_id": 1}, headers=DEMO)
    assert native.headers["content-type"] == "application/problem+json"


# ---------------------------------------------------------------- the Task


def test_the_case_progress_is_a_valid_r4_task() -> None:
    s = handlers.validate_fhir(chest_ct_second_opinion())
    now = datetime(2026, 4, 3, 9, 0, tzinfo=UTC)
    case, _ = handlers._new_case("demo-health", s, {}, now)
    task = fhir_out.task(case, ("partner",))
    Task.model_validate(task)
    assert (task["status"], task["businessStatus"]["coding"][0]["code"]) == ("accepted", "accepted")
    assert task["focus"] == {
        "type": "ServiceRequest",
        "identifier": {"system": "urn:valley:orders", "value": "so-4471"},
    }
    assert task["for"] == {
        "type": "Patient",
        "identifier": {"system": "urn:valley:mrn", "value": "MRN-7"},
    }
    assert task["statusReason"]["text"].startswith("the records:")
    for stage, status in [
        ("report_ready", "in-progress"),
        ("delivered", "completed"),
        ("declined", "rejected"),
    ]:
        moved = case.model_copy(update={"stage": stage, "progress": Progress(report_id="r1")})
        t = fhir_out.task(moved, ("partner",))
        Task.model_validate(t)
        assert t["status"] == status and t["businessStatus"]["coding"][0]["code"] == stage

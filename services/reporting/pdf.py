"""The signed report as a PDF a treating physician files and reads (pure, no I/O
beyond reading the font files).

Every page carries a running header naming the patient (name, date of birth,
MRNs), the report id and "Page x of y", so a page that is separated from the
others still says whom and what it is about. The body follows the order a
physician reads a consult: addressee and requester, patient, clinical question,
the first opinion under review (its wording quoted), the materials reviewed
(from the records manifest), the reviewer (credentials, NPI, licence), the
structured answers, the signature block, then each addendum in a marked box
that is never split across a page break.

Text is set in DejaVu Sans (Debian `fonts-dejavu-core`) with Droid Sans
Fallback (`fonts-droid-fallback`) for CJK, both embedded (subset), so "≥", "→",
"ü" or "脑" print as written. `make install` installs both packages.

The document is written in fpdf2's PDF/A-3B mode, with the FHIR
DiagnosticReport attached as `report.fhir.json` (AFRelationship
`Alternative`). All its dates are the report's own (the last signature's
time), so the same report renders to the same bytes: the hash the FHIR
`presentedForm` quotes stays true on every request.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fpdf import FPDF
from fpdf import __version__ as fpdf_version

from services.reporting.signing import Signature

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/droid"))
FONTS = {
    ("body", ""): "DejaVuSans.ttf",
    ("body", "B"): "DejaVuSans-Bold.ttf",
    ("body", "I"): "DejaVuSans-Oblique.ttf",
    ("mono", ""): "DejaVuSansMono.ttf",
    ("cjk", ""): "DroidSansFallbackFull.ttf",
}
CONCORDANCE_TEXT = {
    "confirmed": "Confirmed: the original diagnosis stands",
    "refined": "Refined: the original diagnosis stands, made more precise",
    "changed_diagnosis": "Changed diagnosis",
}
NOT_RECEIVED = "(not received by reporting)"
KIND_TITLE = {
    "imaging": "Imaging",
    "pathology": "Pathology",
    "notes": "Clinical notes",
    "reports": "Reports",
    "labs": "Laboratory results",
    "treatments": "Treatments",
}


class FontMissing(RuntimeError):
    """A font file the PDF embeds is not installed (run `make install`)."""


def font_path(name: str) -> Path:
    for folder in FONT_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FontMissing(
        f"font {name} not found in {', '.join(map(str, FONT_DIRS))}: install the Debian "
        "packages fonts-dejavu-core and fonts-droid-fallback (make install)"
    )


def identifier_text(identifier: dict[str, str]) -> str:
    """An MRN as a physician reads it: the value, then whose number it is (the
    system's host, or its OID)."""
    system = identifier.get("system", "")
    issuer = urlsplit(system).hostname or system.removeprefix("urn:oid:") if system else ""
    return f"{identifier['value']} ({issuer})" if issuer else identifier["value"]


def human_time(stamp: str) -> str:
    """An ISO 8601 instant as a reader writes it: 2026-11-20 10:00 UTC."""
    when = datetime.fromisoformat(stamp)
    offset = when.utcoffset()
    if offset is not None and not offset:
        return when.strftime("%Y-%m-%d %H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M %z")


def header_lines(doc: dict[str, Any]) -> tuple[str, str]:
    """The running header's two lines (without the page number)."""
    patient = doc.get("patient") or {}
    mrns = ", ".join(identifier_text(i) for i in patient.get("identifiers", [])) or "-"
    who = (
        f"Patient: {patient.get('name') or NOT_RECEIVED}   "
        f"DOB: {patient.get('birth_date') or '-'}   MRN: {mrns}"
    )
    return who, f"Second opinion report {doc['report_id']}   Case {doc['case_id']}"


class _Pdf(FPDF):
    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__(format="A4", enforce_compliance="PDF/A-3B")
        self.doc = doc
        self.producer = f"fpdf2 {fpdf_version}"  # Info and XMP name the same producer
        for (family, style), name in FONTS.items():
            if family != "cjk":
                self.add_font(family, style, str(font_path(name)))
        self.set_auto_page_break(True, margin=18)
        self.set_margins(18, 18, 18)

    def fallback_for(self, texts: str) -> None:
        """Load the CJK fallback only when the text has characters DejaVu lacks:
        parsing that 4 MB font is most of a rendering's time."""
        body: Any = self.fonts["body"]  # a TTFFont (fpdf2 types it with its core fonts)
        covered = body.ttfont.getBestCmap()
        if any(ord(ch) not in covered for ch in set(texts) if not ch.isspace()):
            self.add_font("cjk", "", str(font_path(FONTS[("cjk", "")])))
            self.set_fallback_fonts(["cjk"], exact_match=False)

    def multi_cell(self, *args: Any, **kwargs: Any) -> Any:
        """Left-aligned unless told otherwise (fpdf2 justifies by default, which
        stretches a short line such as the header's across the page)."""
        kwargs.setdefault("align", "L")
        return super().multi_cell(*args, **kwargs)

    def header(self) -> None:
        who, what = header_lines(self.doc)
        self.set_y(8)
        self.set_font("body", "B", 8.5)
        self.multi_cell(0, 4, who, new_x="LMARGIN", new_y="NEXT")
        self.set_font("body", "", 8.5)
        self.cell(self.epw - 30, 4, what)
        self.cell(
            30, 4, f"Page {self.page_no()} of {{nb}}", align="R", new_x="LMARGIN", new_y="NEXT"
        )
        self.set_draw_color(90, 90, 90)
        self.line(self.l_margin, self.get_y() + 1, self.w - self.r_margin, self.get_y() + 1)
        self.set_y(self.get_y() + 4)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("body", "I", 7)
        self.set_text_color(90, 90, 90)
        self.cell(
            0,
            4,
            "Confidential medical information. Electronically signed (JWS EdDSA); "
            "verify against the published keys (/.well-known/jwks.json).",
            align="C",
        )
        self.set_text_color(0, 0, 0)

    # ------------------------------------------------------------ building blocks

    def heading(self, text: str) -> None:
        if self.get_y() > self.h - 40:  # a heading never ends a page on its own
            self.add_page()
        self.ln(2)
        self.set_font("body", "B", 11.5)
        self.set_fill_color(232, 236, 242)
        self.multi_cell(0, 6.5, text, fill=True, new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def field(self, label: str, value: str) -> None:
        self.set_font("body", "B", 9.5)
        self.multi_cell(0, 5, label, new_x="LMARGIN", new_y="NEXT")
        self.set_font("body", "", 9.5)
        self.multi_cell(0, 5, value or "-", new_x="LMARGIN", new_y="NEXT")
        self.ln(1)

    def pair(self, label: str, value: str) -> None:
        """One `label: value` line (wrapping under the value)."""
        self.set_font("body", "B", 9.5)
        self.cell(48, 5, label)
        self.set_font("body", "", 9.5)
        self.multi_cell(0, 5, value or "-", new_x="LMARGIN", new_y="NEXT")

    def quote(self, text: str) -> None:
        self.set_font("body", "I", 9.5)
        self.set_x(self.l_margin + 6)
        self.set_draw_color(150, 150, 150)
        top, page = self.get_y(), self.page_no()
        self.multi_cell(self.epw - 6, 5, f"\u201c{text}\u201d", new_x="LMARGIN", new_y="NEXT")
        if self.page_no() == page:  # a quote running over a page break has no rule
            self.line(self.l_margin + 3, top, self.l_margin + 3, self.get_y())
        self.ln(1)

    def signature_block(self, doc: dict[str, Any], sig: Signature, signer: str) -> None:
        self.set_font("body", "B", 9.5)
        self.multi_cell(
            0,
            5,
            f"Electronically signed by {signer} on {human_time(doc['signed_at'])}",
            new_x="LMARGIN",
            new_y="NEXT",
        )
        self.set_font("mono", "", 7)
        for line in (
            f"Key {sig.kid} ({sig.alg})",
            f"SHA-256 of the signed canonical document (RFC 8785): {sig.content_sha256}",
            f"Signature: {sig.value}",
        ):
            self.multi_cell(0, 3.5, line, new_x="LMARGIN", new_y="NEXT")
        self.ln(2)

    def blocks_height(self, blocks: list[Block]) -> float:
        height = 0.0
        for family, style, size, line, text, gap in blocks:
            self.set_font(family, style, size)
            lines = self.multi_cell(self.epw, line, text, dry_run=True, output="LINES")
            height += len(lines) * line + gap
        return height

    def boxed(self, blocks: list[Block]) -> None:
        """A framed block kept on one page: moved whole to the next if it does not fit."""
        height = self.blocks_height(blocks)
        if self.get_y() + height + 2 > self.page_break_trigger:
            self.add_page()
        top = self.get_y()
        for family, style, size, line, text, gap in blocks:
            self.set_font(family, style, size)
            self.multi_cell(self.epw, line, text, new_x="LMARGIN", new_y="NEXT")
            self.ln(gap)
        self.set_draw_color(60, 60, 60)
        self.set_line_width(0.4)
        self.rect(self.l_margin - 2, top - 1.5, self.epw + 4, self.get_y() - top + 2)
        self.set_line_width(0.2)
        self.ln(4)


# One paragraph of a framed block: font family, style, size, line height, text, gap after.
Block = tuple[str, str, float, float, str, float]


def addendum_blocks(add: dict[str, Any], sig: Signature) -> list[Block]:
    signer = reviewer_name(add["reviewer"])
    return [
        (
            "body",
            "B",
            11,
            6,
            f"ADDENDUM {add['sequence']}  \u2014  signed {human_time(add['signed_at'])}",
            0,
        ),
        (
            "body",
            "I",
            8.5,
            4.5,
            f"{add['addendum_id']}: added after the report was signed; "
            "the report above is unchanged.",
            1.5,
        ),
        ("body", "B", 9.5, 5, "Question", 0),
        ("body", "", 9.5, 5, add["question"], 1),
        ("body", "B", 9.5, 5, "Answer", 0),
        ("body", "", 9.5, 5, add["answer"], 1.5),
        (
            "body",
            "B",
            9.5,
            5,
            f"Electronically signed by {signer} on {human_time(add['signed_at'])}",
            0,
        ),
        ("mono", "", 7, 3.5, f"Key {sig.kid} ({sig.alg})", 0),
        (
            "mono",
            "",
            7,
            3.5,
            f"SHA-256 of the signed canonical document (RFC 8785): {sig.content_sha256}",
            0,
        ),
        ("mono", "", 7, 3.5, f"Signature: {sig.value}", 0),
    ]


def reviewer_name(reviewer: dict[str, Any]) -> str:
    return (
        ", ".join(x for x in (reviewer.get("name"), reviewer.get("credentials")) if x)
        or (reviewer["reviewer_id"])
    )


def _addressee(pdf: _Pdf, doc: dict[str, Any]) -> None:
    addressee = doc.get("addressee") or {}
    ref = doc.get("case_reference") or {}
    pdf.pair("To (treating clinician)", addressee.get("treating_clinician_email") or NOT_RECEIVED)
    pdf.pair(
        "Requesting organisation", addressee.get("requesting_organisation") or doc["tenant_id"]
    )
    pdf.pair("Their reference", ref.get("external_id") or "-")
    pdf.pair("Order (ServiceRequest)", ref.get("request_reference") or "-")
    pdf.pair("Subspecialty", doc["subspecialty"])


def _patient(pdf: _Pdf, doc: dict[str, Any]) -> None:
    pdf.heading("Patient")
    patient = doc.get("patient")
    if not patient:
        pdf.field("Patient", NOT_RECEIVED)
        return
    pdf.pair("Name", patient["name"])
    pdf.pair("Date of birth", patient["birth_date"])
    pdf.pair("Sex", patient.get("sex", "unknown"))
    for ident in patient.get("identifiers", []):
        pdf.pair("MRN", f"{ident['value']}   ({ident['system']})")


def _question_and_first_opinion(pdf: _Pdf, doc: dict[str, Any]) -> None:
    pdf.heading("Clinical question")
    pdf.set_font("body", "", 10)
    pdf.multi_cell(
        0, 5.5, doc.get("clinical_question") or NOT_RECEIVED, new_x="LMARGIN", new_y="NEXT"
    )
    pdf.heading("First opinion under review")
    first = doc.get("first_opinion")
    if not first:
        pdf.field("First opinion", NOT_RECEIVED)
        return
    by = ", ".join(x for x in (first.get("clinician_name"), first.get("institution")) if x)
    pdf.pair("Given by", by or "-")
    pdf.pair("Diagnosis", first["diagnosis"])
    coded = "; ".join(
        f"{c.get('display') or c['code']} ({c['code']})" for c in doc.get("diagnoses", [])
    )
    if coded:
        pdf.pair("Coded", coded)
    pdf.pair("Treatment plan", first.get("treatment_plan") or "-")
    if first.get("report_text"):
        pdf.set_font("body", "B", 9.5)
        pdf.multi_cell(0, 5, "Original report (quoted)", new_x="LMARGIN", new_y="NEXT")
        pdf.quote(first["report_text"])


def _materials(pdf: _Pdf, doc: dict[str, Any]) -> None:
    pdf.heading("Materials reviewed")
    items = doc.get("materials_reviewed")
    if items is None:
        pdf.field("Records manifest", NOT_RECEIVED)
        return
    if doc.get("records_completed_at"):
        pdf.pair("Records complete", human_time(doc["records_completed_at"]))
    for item in items:
        title = KIND_TITLE.get(item["kind"], item["kind"])
        state = f"{item['count']} item(s)" if item["present"] else "NOT AVAILABLE"
        detail = f" - {item['detail']}" if item.get("detail") else ""
        pdf.pair(title, f"{state}{detail}")
        for study in item.get("studies", []):
            pdf.set_x(pdf.l_margin + 48)
            pdf.set_font("body", "", 8.5)
            line = (
                f"{study.get('modality') or '?'}  {study.get('study_date') or 'date unknown'}  "
                f"{study.get('description') or ''}  ({study.get('instances', 0)} images)"
            )
            pdf.multi_cell(pdf.epw - 48, 4.5, line, new_x="LMARGIN", new_y="NEXT")


def _reviewer(pdf: _Pdf, doc: dict[str, Any]) -> None:
    reviewer = doc["reviewer"]
    pdf.heading("Reviewing physician")
    pdf.pair("Name", reviewer.get("name") or reviewer["reviewer_id"])
    pdf.pair("Credentials", reviewer.get("credentials") or "-")
    pdf.pair("NPI", reviewer.get("npi") or "-")
    pdf.pair("Licensed in", reviewer.get("licence_jurisdiction") or "-")


def _opinion(pdf: _Pdf, op: dict[str, Any]) -> None:
    pdf.heading("Opinion: diagnosis")
    pdf.pair("Agrees with diagnosis", "Yes" if op["agrees_with_diagnosis"] else "No")
    pdf.pair("Concordance", CONCORDANCE_TEXT[op["concordance"]])
    if not op["agrees_with_diagnosis"]:
        pdf.field("Reviewer's diagnosis", op["diagnosis"])
        pdf.field("Why", op["diagnosis_rationale"])
    pdf.heading("Opinion: treatment plan")
    pdf.pair("Agrees with the plan", "Yes" if op["agrees_with_treatment_plan"] else "No")
    if op.get("would_do_differently"):
        pdf.field("What the reviewer would do differently", op["would_do_differently"])
    if op.get("imaging"):
        img = op["imaging"]
        pdf.heading("Imaging review")
        pdf.field("Findings (reviewer's words)", img["findings"])
        pdf.set_font("body", "B", 9.5)
        pdf.multi_cell(
            0, 5, f"Original report's wording ({img['reference']})", new_x="LMARGIN", new_y="NEXT"
        )
        pdf.quote(img["original_wording"])
        pdf.field("Assessment", img["assessment"])
    pdf.heading("Recommendations")
    pdf.field(
        "Recommended next steps", "\n".join(f"\u2022 {s}" for s in op["recommended_next_steps"])
    )
    pdf.field(
        "Information that would change this opinion", op["information_that_would_change_opinion"]
    )


def _xmp(title: str, producer: str, when: datetime) -> str:
    """fpdf2's PDF/A XMP with the report's own time instead of the wall clock."""
    stamp = when.isoformat(timespec="seconds")
    return "\n".join(
        [
            '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="fpdf2">',
            '  <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"',
            '    xmlns:dc="http://purl.org/dc/elements/1.1/"',
            '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"',
            '    xmlns:pdf="http://ns.adobe.com/pdf/1.3/"',
            '    xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/">',
            f'    <rdf:Description rdf:about="" xmp:CreateDate="{stamp}"'
            f' xmp:ModifyDate="{stamp}" xmp:MetadataDate="{stamp}"'
            f' pdf:Producer="{escape(producer)}">',
            "      <pdfaid:part>3</pdfaid:part>",
            "      <pdfaid:conformance>B</pdfaid:conformance>",
            "      <dc:title><rdf:Alt>",
            f'        <rdf:li xml:lang="x-default">{escape(title)}</rdf:li>',
            "      </rdf:Alt></dc:title>",
            "    </rdf:Description>",
            "  </rdf:RDF>",
            "</x:xmpmeta>",
        ]
    )


def pdf_report(
    doc: dict[str, Any],
    sig: Signature,
    addenda: list[tuple[dict[str, Any], Signature]],
    fhir_attachment: dict[str, Any] | None = None,
) -> bytes:
    """The report for the treating physician; `fhir_attachment` (the DiagnosticReport
    without its presentedForm, which names this PDF's hash) is embedded as a file."""
    rendered_at = datetime.fromisoformat(
        max([doc["signed_at"], *(a["signed_at"] for a, _ in addenda)])
    )
    pdf = _Pdf(doc)
    pdf.fallback_for(json.dumps([doc, *(a for a, _ in addenda)], ensure_ascii=False))
    title = f"Second opinion report {doc['report_id']}"
    pdf.set_title(title)
    pdf.set_lang("en")
    pdf.set_creation_date(rendered_at)
    pdf.set_xmp_metadata(_xmp(title, pdf.producer, rendered_at))
    pdf.add_page()
    pdf.set_font("body", "B", 16)
    n = len(addenda)
    status = f"final, {n} addend{'um' if n == 1 else 'a'}" if addenda else "final"
    pdf.cell(0, 9, f"Second opinion report ({status})", new_x="LMARGIN", new_y="NEXT")
    _addressee(pdf, doc)
    _patient(pdf, doc)
    _question_and_first_opinion(pdf, doc)
    _materials(pdf, doc)
    _reviewer(pdf, doc)
    _opinion(pdf, doc["opinion"])
    pdf.heading("Signature")
    pdf.signature_block(doc, sig, reviewer_name(doc["reviewer"]))
    for add, add_sig in addenda:
        pdf.ln(2)
        pdf.boxed(addendum_blocks(add, add_sig))
    if fhir_attachment is not None:
        pdf.embed_file(
            bytes=json.dumps(fhir_attachment, ensure_ascii=False, indent=1).encode(),
            basename="report.fhir.json",
            modification_date=rendered_at,
            mime_type="application/fhir+json",
            associated_file_relationship="Alternative",
            desc="The report as a FHIR R4 DiagnosticReport",
        )
    return bytes(pdf.output())

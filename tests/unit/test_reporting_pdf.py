# ruff: noqa: RUF001, RUF002  (the text outside Latin-1 is the point)
"""The PDF as a treating physician files and reads it, checked from the outside:
pypdf extracts each page's text, poppler's pdftoppm renders the pages to PNG
(kept in test-artifacts/reporting/ to be looked at).

- every page names the patient (name, date of birth, MRNs), the report id and
  "Page x of y", so a loose page still says whom it is about;
- the body names the addressee and requester, the question, the first opinion
  (its wording quoted), the materials reviewed, the reviewer (credentials, NPI,
  licence), the answers, the signature and each addendum (dated, signed);
- text outside Latin-1 (≥, →, ü, ×, Ł, CJK) comes back as written;
- an addendum is never split across a page break, wherever it falls;
- the file is PDF/A-3B with the fonts embedded and the FHIR DiagnosticReport
  attached, and the same report renders to the same bytes."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from services.reporting import domain, render, signing
from services.reporting.keys import KeyRing
from services.reporting.pdf import identifier_text
from tests import reporting_case as case
from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts" / "reporting"
Signed = tuple[dict[str, Any], signing.Signature]


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing(tmp_path_factory.mktemp("keys"))


def sign(ring: KeyRing, document: dict[str, Any]) -> signing.Signature:
    return signing.sign(document, "rev-neuro-1", ring.private_key("rev-neuro-1"))


def with_addenda(
    ring: KeyRing, *addenda: domain.Addendum, details: domain.CaseDetails | None = case.CASE
) -> tuple[Signed, list[Signed]]:
    doc = case.report_document(details)
    sig = sign(ring, doc)
    signed = []
    for n, add in enumerate(addenda, start=1):
        add_doc = domain.addendum_document(doc, sig.content_sha256, n, add, case.ADDENDUM_AT)
        signed.append((add_doc, sign(ring, add_doc)))
    return (doc, sig), signed


def pages_text(pdf: bytes) -> list[str]:
    """Each page's text, whitespace collapsed (pypdf's line breaks are layout)."""
    return [" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(pdf)).pages]


@pytest.fixture(scope="module")
def rendered(ring: KeyRing) -> tuple[Signed, list[Signed], render.Rendered]:
    (doc, sig), addenda = with_addenda(ring, case.ADDENDUM)
    return (doc, sig), addenda, render.render(doc, sig, addenda, "https://r.example/pdf")


def test_every_page_names_the_patient_the_report_and_its_page(
    rendered: tuple[Signed, list[Signed], render.Rendered],
) -> None:
    (doc, _), _, out = rendered
    pages = pages_text(out.pdf)
    assert len(pages) >= 3  # the example case runs over several pages
    for number, text in enumerate(pages, start=1):
        for expected in (
            f"Patient: {case.PATIENT.name}",
            "DOB: 1961-04-09",
            "MRN-0042817",
            "SM-99120 (stmarys.example)",
            doc["report_id"],
            f"Page {number} of {len(pages)}",
        ):
            assert expected in text, f"page {number} lacks {expected!r}"


def test_the_report_names_what_a_physician_needs(
    rendered: tuple[Signed, list[Signed], render.Rendered],
) -> None:
    (_, sig), [(add, add_sig)], out = rendered
    text = " ".join(pages_text(out.pdf))
    first = case.FIRST_OPINION
    opinion = case.opinion_json()
    for expected in (
        "To (treating clinician) p.anders@stmarys.example",
        "Requesting organisation demo-health",
        "SMRH-2026-118",
        "ServiceRequest/sr-118",
        case.QUESTION,
        first.diagnosis,
        first.treatment_plan,
        "Dr. Paul Anders, St Mary's Regional Hospital",
        "Original report (quoted)",
        "Impression: cannot exclude low-grade glioma.",
        # Materials reviewed, from the manifest: each study with modality, date, images.
        "MR 2026-10-30 MRI brain w/wo contrast (412 images)",
        "CT 2026-10-28 CT head without contrast (96 images)",
        "Laboratory results 14 item(s) - CBC, CMP, coagulation",
        "Clinical notes 3 item(s)",
        "Pathology NOT AVAILABLE - no biopsy yet",
        # The reviewer.
        "Credentials MD, ABR Neuroradiology CAQ",
        "NPI 1234567802",
        "Licensed in US-CA",
        # The structured answers.
        opinion["diagnosis"],
        "Concordance Changed diagnosis",
        opinion["would_do_differently"],
        "MRI with perfusion (DSC) in 6 weeks",
        opinion["information_that_would_change_opinion"],
        # Signature block and the addendum, dated and signed.
        "Electronically signed by Dr. Ines Moreau, MD, ABR Neuroradiology CAQ "
        "on 2026-11-20 10:00 UTC",
        sig.content_sha256,
        "ADDENDUM 1 — signed 2026-11-22 09:30 UTC",
        add["addendum_id"],
        add_sig.content_sha256,
    ):
        assert expected in text, f"the report lacks {expected!r}"


def test_text_outside_latin1_round_trips(
    rendered: tuple[Signed, list[Signed], render.Rendered],
) -> None:
    _, _, out = rendered
    text = " ".join(pages_text(out.pdf))
    for written in (
        "Jürgen Müller-Łukasz 李明",
        "DWI ≥ 2× contralateral",
        "(→ resection)",
        "脑梗死还是胶质瘤？",
        "3.1 × 2.4 cm",
        "rCBV ≥ 1.75 → tumour?",
        "Über-cautious",
        "随访MRI六周。",
    ):
        assert written in text, f"{written!r} did not survive"
    assert "DWI ? 2" not in text  # what a Latin-1 core font printed before
    resources: Any = PdfReader(io.BytesIO(out.pdf)).pages[0]["/Resources"]
    fonts = resources["/Font"]
    embedded = {
        str(f.get_object()["/BaseFont"]).split("+")[-1]
        for f in fonts.values()
        if "/DescendantFonts" in f.get_object()
        and "/FontFile2" in f.get_object()["/DescendantFonts"][0].get_object()["/FontDescriptor"]
    }
    assert {"DejaVuSansBook", "DejaVuSansBold", "DroidSansFallback"} <= embedded


def test_an_addendum_is_never_split_across_pages(ring: KeyRing) -> None:
    """Eight addenda of growing length after one another, so page breaks fall at
    many places among them: each addendum's heading, answer and signature are
    on one page, and a page break moved at least one of them whole."""
    addenda = [
        domain.Addendum(
            question=f"Follow-up question {n}?",
            answer=f"Answer {n}. " + "The perfusion ratio stays below 1.75 → infarct. " * (4 * n),
        )
        for n in range(1, 9)
    ]
    # Without the CJK patient name: the fallback font's parsing would triple the time.
    (doc, sig), signed = with_addenda(
        ring, *addenda, details=case.CASE.model_copy(update={"patient": None})
    )
    pages = pages_text(render.pdf_report(doc, sig, signed))
    starts = []
    for add, add_sig in signed:
        start = [i for i, t in enumerate(pages) if f"ADDENDUM {add['sequence']} —" in t]
        end = [i for i, t in enumerate(pages) if f"Signature: {add_sig.value}" in t]
        assert len(start) == 1 and start == end, f"addendum {add['sequence']} split: {start} {end}"
        starts.append(start[0])
    assert len(set(starts)) >= 3  # the addenda did run over several pages


def test_pdf_a3b_with_the_fhir_report_attached_and_stable_bytes(
    rendered: tuple[Signed, list[Signed], render.Rendered], ring: KeyRing
) -> None:
    (doc, _), _, out = rendered
    reader = PdfReader(io.BytesIO(out.pdf))
    root: Any = reader.trailer["/Root"]
    xmp = root["/Metadata"].get_object().get_data().decode()
    assert "<pdfaid:part>3</pdfaid:part>" in xmp and "<pdfaid:conformance>B" in xmp
    assert 'xmp:ModifyDate="2026-11-22T09:30:00+00:00"' in xmp  # the report's time, not now
    assert "/OutputIntents" in root
    (attached,) = reader.attachments["report.fhir.json"]
    fhir = json.loads(attached)
    assert fhir["resourceType"] == "DiagnosticReport" and fhir["id"] == doc["report_id"]
    assert fhir["status"] == "appended" and "presentedForm" not in fhir  # cannot hash itself
    # The same report renders to the same bytes (cheaper without the CJK fallback).
    plain = domain.Addendum(question="Biopsy?", answer="Not before the MRI at 6 weeks.")
    (doc, sig), addenda = with_addenda(ring, plain, details=None)
    first = render.render(doc, sig, addenda, "https://r.example/pdf")
    again = render.render(doc, sig, addenda, "https://r.example/pdf")
    assert again.pdf == first.pdf and again.fhir == first.fhir


def test_what_reporting_was_not_told_is_shown_as_not_received(ring: KeyRing) -> None:
    opinion = domain.complete_opinion(
        domain.OpinionDraft.model_validate(case.opinion_json()), "neuroradiology"
    )
    doc = domain.report_document(case.ASSIGNMENT, case.REVIEWER, opinion, case.SIGNED_AT)
    pages = pages_text(render.pdf_report(doc, sign(ring, doc), []))
    assert all("Patient: (not received by reporting)" in t for t in pages)
    assert "Clinical question (not received by reporting)" in " ".join(pages)


def test_mrn_names_its_issuer() -> None:
    assert identifier_text({"system": "https://h.example/mrn", "value": "1"}) == "1 (h.example)"
    assert identifier_text({"system": "urn:oid:1.2.3", "value": "2"}) == "2 (1.2.3)"
    assert identifier_text({"system": "", "value": "3"}) == "3"


def test_pages_render_to_png_for_a_look(
    rendered: tuple[Signed, list[Signed], render.Rendered],
) -> None:
    """pdftoppm (poppler-utils, installed by make install) renders every page; the
    PNGs stay in test-artifacts/reporting/ to be looked at."""
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm missing: run make install (poppler-utils)")
    _, _, out = rendered
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    (ARTIFACTS / "report.pdf").write_bytes(out.pdf)
    subprocess.run(
        ["pdftoppm", "-r", "80", "-png", str(ARTIFACTS / "report.pdf"), str(ARTIFACTS / "page")],
        check=True,
        timeout=60,
    )
    pngs = sorted(ARTIFACTS.glob("page-*.png"))
    assert len(pngs) == len(PdfReader(io.BytesIO(out.pdf)).pages)
    assert all(re.fullmatch(r"page-\d+\.png", p.name) and p.stat().st_size > 5000 for p in pngs)


def test_fonts_missing_is_a_precise_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from services.reporting import pdf

    monkeypatch.setattr(pdf, "FONT_DIRS", (tmp_path,))
    with pytest.raises(pdf.FontMissing, match="fonts-dejavu-core"):
        pdf.font_path("DejaVuSans.ttf")

"""Renderings of a signed report, pure (no I/O beyond the font files): the PDF
for the treating physician (`pdf`) and the FHIR R4 `DiagnosticReport` for
systems (`fhir`), made together because each names the other: the PDF embeds
the DiagnosticReport, and the DiagnosticReport's `presentedForm` quotes the
PDF's size and SHA-1.

Both are views of the signed canonical document, never the thing signed: the
signature (and each addendum's) travels with them so a reader can check it
against the published keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.reporting.fhir import fhir_report
from services.reporting.pdf import pdf_report
from services.reporting.signing import Signature

Signed = tuple[dict[str, Any], Signature]


@dataclass(frozen=True)
class Rendered:
    pdf: bytes
    fhir: dict[str, Any]


def render(doc: dict[str, Any], sig: Signature, addenda: list[Signed], pdf_url: str) -> Rendered:
    """The PDF (with the DiagnosticReport attached) and the DiagnosticReport that
    quotes that very PDF; the same report always renders to the same bytes."""
    pdf = pdf_report(doc, sig, addenda, fhir_attachment=fhir_report(doc, sig, addenda))
    return Rendered(pdf=pdf, fhir=fhir_report(doc, sig, addenda, pdf=pdf, pdf_url=pdf_url))


__all__ = ["Rendered", "fhir_report", "pdf_report", "render"]

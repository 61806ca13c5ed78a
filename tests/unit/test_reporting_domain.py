"""reporting without servers: opinion completeness, JWS (EdDSA) signing and
verification, tampering, addenda, the key ring, FHIR and PDF rendering, and
the partner's verify command on saved files."""

from __future__ import annotations

import copy
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pypdf import PdfReader

from services.reporting import domain, render, signing, verify
from services.reporting.keys import KeyRing
from shared.errors import InvalidInput

ASSIGNMENT = {
    "case_id": "case-1",
    "tenant_id": "demo-health",
    "assignment_id": "asg-1",
    "subspecialty": "neuroradiology",
}
REVIEWER = domain.Reviewer(
    reviewer_id="rev-neuro-1", name="Dr. Ines Moreau", credentials="MD, ABR Neuroradiology CAQ"
)


def opinion_json() -> dict[str, Any]:
    return {
        "agrees_with_diagnosis": False,
        "diagnosis": "Subacute infarct rather than neoplasm",
        "diagnosis_rationale": "Gyriform enhancement and restricted diffusion.",
        "agrees_with_treatment_plan": False,
        "would_do_differently": "Defer resection; repeat MRI with perfusion in 6 weeks.",
        "information_that_would_change_opinion": "Growth or new enhancement on follow-up.",
        "recommended_next_steps": ["MRI with perfusion in 6 weeks", "Neurology referral"],
        "concordance": "changed_diagnosis",
        "imaging": {
            "findings": "Gyriform enhancement in the left MCA territory without mass effect.",
            "original_wording": "cannot exclude low-grade glioma",
            "reference": "revised",
            "assessment": "Diagnosis changes from possible neoplasm to subacute infarct.",
        },
    }


def signed(tmp_path: Path) -> tuple[KeyRing, dict[str, Any], signing.Signature]:
    ring = KeyRing(tmp_path / "keys")
    opinion = domain.complete_opinion(
        domain.OpinionDraft.model_validate(opinion_json()), "neuroradiology"
    )
    doc = domain.report_document(ASSIGNMENT, REVIEWER, opinion, "2026-11-20T10:00:00+00:00")
    return ring, doc, signing.sign(doc, "rev-neuro-1", ring.private_key("rev-neuro-1"))


def gaps_of(data: dict[str, Any], subspecialty: str = "neuroradiology") -> list[str]:
    with pytest.raises(InvalidInput) as err:
        domain.complete_opinion(domain.OpinionDraft.model_validate(data), subspecialty)
    return [e["loc"] for e in err.value.errors]


def test_complete_opinion_signs_renders_and_verifies(tmp_path: Path) -> None:
    ring, doc, sig = signed(tmp_path)
    assert signing.verification_problems(doc, sig, ring.public_jwks()) == []
    fhir = render.fhir_report(doc, sig, [])
    parsed = DiagnosticReport.model_validate(fhir)
    assert parsed.status == "final"
    assert fhir["conclusionCode"][0]["coding"][0]["code"] == "changed_diagnosis"
    ext = {e["url"]: e for e in fhir["extension"][0]["extension"]}
    assert ext["kid"]["valueString"] == sig.kid
    practitioner = next(r for r in fhir["contained"] if r["resourceType"] == "Practitioner")
    assert fhir["performer"][0]["reference"] == "#reviewer" == f"#{practitioner['id']}"
    assert practitioner["qualification"][0]["code"]["text"] == "MD, ABR Neuroradiology CAQ"
    text = " ".join(
        p.extract_text() for p in PdfReader(io.BytesIO(render.pdf_report(doc, sig, []))).pages
    )
    text = " ".join(text.split())
    for expected in (
        "Second opinion report",
        "Subacute infarct rather than neoplasm",
        "cannot exclude low-grade glioma",
        "Dr. Ines Moreau, MD, ABR Neuroradiology CAQ",
        "Neurology referral",
        "Changed diagnosis",
        sig.content_sha256,
    ):
        assert expected in text


@pytest.mark.parametrize(
    "path,value",
    [
        (("opinion", "diagnosis"), "Low-grade glioma"),
        (("opinion", "concordance"), "confirmed"),
        (("opinion", "imaging", "reference"), "confirmed"),
        (("reviewer", "credentials"), "MD"),
        (("signed_at",), "2026-11-21T10:00:00+00:00"),
        (("tenant_id",), "other-clinic"),
    ],
)
def test_tampering_with_one_field_fails_verification(
    tmp_path: Path, path: tuple[str, ...], value: str
) -> None:
    ring, doc, sig = signed(tmp_path)
    tampered = copy.deepcopy(doc)
    target = tampered
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = signing.verification_problems(tampered, sig, ring.public_jwks())
    assert problems == ["the signed payload is not this document"]
    # The same change made inside the JWS breaks the signature itself.
    header, _, value = sig.jws.split(".")
    forged_payload = signing.b64url(signing.canonical_bytes(tampered))
    forged = sig.model_copy(update={"jws": f"{header}.{forged_payload}.{value}"})
    assert signing.verification_problems(tampered, forged, ring.public_jwks()) == [
        "signature does not verify"
    ]


def test_forged_hash_still_fails_and_a_foreign_key_is_refused(tmp_path: Path) -> None:
    ring, doc, sig = signed(tmp_path)
    tampered = {**doc, "case_id": "case-2"}
    forged = sig.model_copy(update={"content_sha256": signing.content_sha256(tampered)})
    assert signing.verification_problems(tampered, forged, ring.public_jwks()) == [
        "the signed payload is not this document",
        "content_sha256 does not match the signed payload",
    ]
    # Another reviewer's key signing a report that names rev-neuro-1.
    other = signing.sign(doc, "rev-neuro-2", ring.private_key("rev-neuro-2"))
    problems = signing.verification_problems(doc, other, ring.public_jwks())
    assert problems == ["the key does not belong to the reviewer the report names"]
    unpublished = signing.sign(doc, "rev-neuro-1", Ed25519PrivateKey.generate())
    assert signing.verification_problems(doc, unpublished, ring.public_jwks()) == [
        f"no published key {unpublished.kid}"
    ]
    relabelled = sig.model_copy(update={"kid": "rev-neuro-1#0000000000000000"})
    assert signing.verification_problems(doc, relabelled, ring.public_jwks()) == [
        "the JWS header names another key than the signature"
    ]


@pytest.mark.parametrize(
    "change,subspecialty,expected",
    [
        (
            {"information_that_would_change_opinion": ""},
            "neuroradiology",
            ["body.information_that_would_change_opinion"],
        ),
        ({"diagnosis": " "}, "neuroradiology", ["body.diagnosis"]),
        ({"would_do_differently": ""}, "neuroradiology", ["body.would_do_differently"]),
        ({"recommended_next_steps": []}, "neuroradiology", ["body.recommended_next_steps"]),
        (
            {"agrees_with_treatment_plan": None},
            "neuroradiology",
            ["body.agrees_with_treatment_plan"],
        ),
        ({"concordance": "confirmed"}, "neuroradiology", ["body.concordance"]),
        ({"imaging": None}, "neuroradiology", ["body.imaging"]),
        (
            {"imaging": {"findings": "Gyriform enhancement seen.", "reference": "revised"}},
            "neuroradiology",
            ["body.imaging.original_wording", "body.imaging.assessment"],
        ),
    ],
)
def test_missing_required_part_is_refused_with_its_field_named(
    change: dict[str, Any], subspecialty: str, expected: list[str]
) -> None:
    assert gaps_of({**opinion_json(), **change}, subspecialty) == expected


def test_empty_draft_names_every_missing_part_and_non_imaging_needs_no_imaging() -> None:
    assert gaps_of({}, "oncology") == [
        "body.agrees_with_diagnosis",
        "body.agrees_with_treatment_plan",
        "body.information_that_would_change_opinion",
        "body.recommended_next_steps",
        "body.concordance",
    ]
    agreeing = {**opinion_json(), "agrees_with_diagnosis": True, "concordance": "refined"}
    agreeing.pop("imaging")
    assert domain.opinion_gaps(domain.OpinionDraft.model_validate(agreeing), "oncology") == []


def test_addendum_is_signed_and_keeps_the_original_signature_valid(tmp_path: Path) -> None:
    ring, doc, sig = signed(tmp_path)
    original = copy.deepcopy(doc)
    add = domain.addendum_document(
        doc,
        sig.content_sha256,
        1,
        domain.Addendum(question="Is a biopsy needed?", answer="Not before the follow-up MRI."),
        "2026-11-22T10:00:00+00:00",
    )
    add_sig = signing.sign(add, "rev-neuro-1", ring.private_key("rev-neuro-1"))
    bundle: dict[str, Any] = {
        "report": doc,
        "signature": sig.model_dump(),
        "addenda": [{"addendum": add, "signature": add_sig.model_dump()}],
    }
    assert doc == original and verify.check(bundle, ring.public_jwks()) == []
    assert render.fhir_report(doc, sig, [(add, add_sig)])["status"] == "appended"
    pdf = render.pdf_report(doc, sig, [(add, add_sig)])
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert "Not before the follow-up MRI." in " ".join(text.split())
    bundle["addenda"][0]["addendum"] = {**add, "answer": "Yes, biopsy now."}
    problems = verify.check(bundle, ring.public_jwks())
    assert f"{add['addendum_id']}: the signed payload is not this document" in problems
    assert not [p for p in problems if p.startswith("report:")]  # the report still verifies


def test_key_ring_keeps_private_keys_in_0600_files_and_publishes_only_public(
    tmp_path: Path,
) -> None:
    ring = KeyRing(tmp_path / "keys")
    key = ring.private_key("rev-neuro-1")
    path = tmp_path / "keys" / "rev-neuro-1.ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KeyRing(tmp_path / "keys").private_key("rev-neuro-1")  # a restart reuses it
    assert signing.raw_public(again.public_key()) == signing.raw_public(key.public_key())
    (jwk,) = ring.public_jwks()
    assert set(jwk) == {"kty", "crv", "alg", "use", "kid", "x", "owner"}  # no "d"
    with pytest.raises(ValueError):
        ring.private_key("../etc/passwd")


def test_verify_command_on_saved_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ring, doc, sig = signed(tmp_path)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": ring.public_jwks()}))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"report": doc, "signature": sig.model_dump(), "addenda": []}))
    assert verify.main([str(report), "--keys", str(keys)]) == 0
    assert capsys.readouterr().out.startswith(f"VALID {doc['report_id']}")
    report.write_text(
        json.dumps({"report": {**doc, "subspecialty": "x"}, "signature": sig.model_dump()})
    )
    assert verify.main([str(report), "--keys", str(keys)]) == 1
    assert "the signed payload is not this document" in capsys.readouterr().out

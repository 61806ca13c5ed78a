"""reporting's signatures against the standards, checked by libraries that are
not ours: the JWS of a report verified from the JWK set the service publishes
at /.well-known/jwks.json alone, by `joserfc` (Python) and by the npm `jose`
package under Node; a tampered field fails both; the payload is the RFC 8785
form of the document; rotated keys keep verifying until retired.

The service is built in-process (`create_service`, no lifespan): the JWKS and
verify routes read no database, so none is needed here."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio
import rfc8785
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet, KeySetSerialization

from services.reporting import domain, signing
from services.reporting.app import create_service
from services.reporting.keys import KeyRing
from services.reporting.settings import ReportingSettings
from tests import reporting_case
from tests.conftest import REPO
from tests.reporting_case import ASSIGNMENT, REVIEWER, opinion_json

# RFC 9864 deprecates "EdDSA" for the fully specified "Ed25519"; reporting signs with
# "EdDSA" because that is what partners' JOSE libraries verify today (docs/reporting.md).
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated:UserWarning")
NODE_PACKAGE = REPO / "tests" / "conformance" / "node"
SIGNED_AT = "2026-11-20T10:00:00+00:00"


def report(case: domain.CaseDetails | None = reporting_case.CASE) -> dict[str, Any]:
    """A report on the complete example case (tests/reporting_case.py), or on a case
    reporting was told nothing about (`case=None`)."""
    opinion = domain.complete_opinion(
        domain.OpinionDraft.model_validate(opinion_json()), "neuroradiology"
    )
    return domain.report_document(ASSIGNMENT, REVIEWER, opinion, SIGNED_AT, case)


def with_payload(jws_compact: str, document: dict[str, Any]) -> str:
    """The same header and signature around another payload: a tampered report."""
    header, _, value = jws_compact.split(".")
    return f"{header}.{signing.b64url(rfc8785.dumps(document))}.{value}"


@pytest_asyncio.fixture(loop_scope="session")
async def published(tmp_path: Path) -> AsyncIterator[tuple[KeyRing, httpx.AsyncClient]]:
    settings = ReportingSettings(key_dir=tmp_path / "keys", trace_dir=tmp_path / "traces")
    service = create_service(settings)
    transport = httpx.ASGITransport(app=service.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://reporting") as http:
        yield KeyRing(settings.key_dir), http
    await service.client.close()


async def fetch_jwks(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get("/.well-known/jwks.json")  # no credentials: it is public
    assert resp.status_code == 200
    jwks: dict[str, Any] = resp.json()
    assert all("d" not in k for k in jwks["keys"])  # public halves only
    return jwks


def joserfc_payload(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The signed document, as joserfc verifies it with the published keys alone."""
    keys = KeySet.import_key_set(cast(KeySetSerialization, jwks))
    verified = jws.deserialize_compact(token, keys, algorithms=["EdDSA"])
    payload: dict[str, Any] = json.loads(verified.payload)
    return payload


@pytest.fixture(scope="module")
def node_jose(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/conformance/node installed from its lockfile into a temporary directory."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are needed for the second JOSE library")
    target = tmp_path_factory.mktemp("node-jose")
    for name in ("package.json", "package-lock.json", "verify.mjs"):
        shutil.copy(NODE_PACKAGE / name, target / name)
    subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=target,
        check=True,
        timeout=180,
    )
    return target


def node_verify(package: Path, token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(package / "verify.mjs")],
        input=json.dumps({"jwks": jwks, "jws": token}),
        capture_output=True,
        text=True,
        cwd=package,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_report_jws_verifies_with_joserfc_and_node_jose_from_the_published_jwks(
    published: tuple[KeyRing, httpx.AsyncClient], node_jose: Path
) -> None:
    ring, http = published
    document = report()
    sig = signing.sign(document, "rev-neuro-1", ring.private_key("rev-neuro-1"))
    jwks = await fetch_jwks(http)
    header = json.loads(signing.b64url_decode(sig.jws.split(".")[0]))
    assert header == {"alg": "EdDSA", "kid": sig.kid, "typ": "JOSE"}
    assert signing.b64url_decode(sig.jws.split(".")[1]) == rfc8785.dumps(document)

    assert joserfc_payload(sig.jws, jwks) == document
    by_node = node_verify(node_jose, sig.jws, jwks)
    assert by_node == {"valid": True, "payload": document, "kid": sig.kid}

    # The payload binds the opinion to whom, what and which case it is about.
    assert document["patient"]["identifiers"][0]["value"] == "MRN-0042817"
    assert document["clinical_question"] == reporting_case.QUESTION
    assert document["case_reference"]["request_reference"] == "ServiceRequest/sr-118"

    # One field changed inside the signed payload: both libraries refuse it, be it
    # the answer, the patient's MRN, the question or the case reference.
    patient = document["patient"]
    other_mrn = [{**patient["identifiers"][0], "value": "MRN-0000001"}]
    for changed in (
        {"opinion": {**document["opinion"], "concordance": "confirmed"}},
        {"patient": {**patient, "identifiers": other_mrn}},
        {"clinical_question": "Is it a meningioma?"},
        {"case_reference": {**document["case_reference"], "external_id": "OTHER-1"}},
    ):
        forged_payload = with_payload(sig.jws, {**document, **changed})
        with pytest.raises(BadSignatureError):
            joserfc_payload(forged_payload, jwks)
        assert node_verify(node_jose, forged_payload, jwks) == {
            "valid": False,
            "error": "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
        }
    tampered = with_payload(
        sig.jws, {**document, "opinion": {**document["opinion"], "concordance": "confirmed"}}
    )
    # And the service's own check, over HTTP, agrees on both.
    genuine = await http.post(
        "/v1/verify", json={"document": document, "signature": sig.model_dump()}
    )
    assert genuine.json() == {"valid": True, "problems": []}
    forged = sig.model_copy(update={"jws": tampered})
    refused = await http.post(
        "/v1/verify", json={"document": document, "signature": forged.model_dump()}
    )
    assert refused.json()["valid"] is False


def test_signed_payload_carries_the_case_reference_and_patient_when_known() -> None:
    plain = report(case=None)
    assert (plain["case_id"], plain["tenant_id"], plain["assignment_id"]) == (
        "case-7f3a",
        "demo-health",
        "asg-7f3a-1",
    )
    assert "patient" not in plain and "clinical_question" not in plain  # not told: not signed
    known = report()
    assert known["patient"] == {
        "name": reporting_case.PATIENT.name,
        "birth_date": "1961-04-09",
        "sex": "male",
        "identifiers": [i.model_dump() for i in reporting_case.PATIENT.identifiers],
    }
    assert known["clinical_question"] == reporting_case.QUESTION
    assert known["case_reference"] == {
        "external_id": "SMRH-2026-118",
        "request_reference": "ServiceRequest/sr-118",
    }
    assert known["first_opinion"]["diagnosis"] == reporting_case.FIRST_OPINION.diagnosis
    assert known["addressee"]["treating_clinician_email"] == "p.anders@stmarys.example"
    assert [m["kind"] for m in known["materials_reviewed"]] == [
        "imaging",
        "reports",
        "notes",
        "labs",
        "pathology",
    ]
    assert known["reviewer"]["npi"] == "1234567802"
    assert known["reviewer"]["licence_jurisdiction"] == "US-CA"


async def test_rotated_keys_stay_published_and_verifiable_until_retired(
    published: tuple[KeyRing, httpx.AsyncClient],
) -> None:
    ring, http = published
    document = report()
    old = signing.sign(document, "rev-neuro-1", ring.private_key("rev-neuro-1"))
    new_kid = ring.rotate("rev-neuro-1")
    assert new_kid != old.kid
    new = signing.sign(document, "rev-neuro-1", ring.private_key("rev-neuro-1"))
    assert new.kid == new_kid

    jwks = await fetch_jwks(http)
    assert {k["kid"] for k in jwks["keys"]} == {old.kid, new_kid}
    assert joserfc_payload(old.jws, jwks) == joserfc_payload(new.jws, jwks) == document
    assert signing.verification_problems(document, old, jwks["keys"]) == []

    assert ring.retire(old.kid)
    assert not ring.retire(new_kid)  # the current key is rotated, never retired
    jwks = await fetch_jwks(http)
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]
    assert signing.verification_problems(document, old, jwks["keys"]) == [
        f"no published key {old.kid}"
    ]
    assert (await http.get("/v1/keys")).json() == jwks  # the older address, same set


def test_key_command_rotates_lists_and_retires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.reporting import keys

    key_dir = ["--key-dir", str(tmp_path / "keys")]
    first = KeyRing(tmp_path / "keys").rotate("rev-neuro-1")  # creates the first key
    assert keys.main([*key_dir, "rotate", "rev-neuro-1"]) == 0
    second = capsys.readouterr().out.strip()
    assert keys.main([*key_dir, "list"]) == 0
    assert {k["kid"] for k in json.loads(capsys.readouterr().out)["keys"]} == {first, second}
    assert keys.main([*key_dir, "retire", first]) == 0
    assert keys.main([*key_dir, "retire", first]) == 1  # already gone
    assert [k["kid"] for k in KeyRing(tmp_path / "keys").public_jwks()] == [second]

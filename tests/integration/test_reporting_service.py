"""The reporting service against the real broker and database.

In-process (`create_service(settings, ManualClock)`, the FastAPI app with its
lifespan: the real Kafka consumers and outbox relay, a fresh database):
case.assigned consumed from the real topic, opinions submitted over HTTP and
signed at the clock's instant, report.ready / report.addendum read back from
the real topics, reports fetched as JSON, FHIR and PDF by the tenant's partner;
reassignment, wrong reviewers, other tenants and tampering refused.

As a process (`python -m services.reporting`, settings from the environment),
one test: what only a process shows, that the module entry point serves and
that the partner's verify command checks a report fetched over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pypdf import PdfReader

from services.reporting.app import create_service
from services.reporting.settings import ReportingSettings
from shared.clock import ManualClock
from shared.envelope import ce_headers, new_event_id
from shared.events import (
    ALL_TOPICS,
    CaseAccepted,
    CaseAssigned,
    CaseReassigned,
    Event,
    RecordsComplete,
    ReportAddendum,
    ReportReady,
    RoutingContext,
)
from shared.runtime import Service, ensure_topics
from shared.store import connect
from tests import reporting_case
from tests.conftest import REPO, eventually
from tests.unit.test_reporting_domain import opinion_json
from tests.unit.test_reporting_signatures import joserfc_payload

TENANT = "demo-health"
SIGNING_TIME = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def key(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_id}.dev-secret-{key_id}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def reporting_process(
    infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`python -m services.reporting` on a free port, its own database and key dir."""
    state = tmp_path_factory.mktemp("reporting")
    port, run = free_port(), uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": infra["kafka_bootstrap"],
        "MONGO_URI": infra["mongo_uri"],
        "TRACE_DIR": str(state / "traces"),
        "REPORTING_HTTP_PORT": str(port),
        "REPORTING_MONGO_DATABASE": f"it_reporting_{run}",
        "REPORTING_SERVICE_NAME": f"reporting-it-{run}",
        "REPORTING_KEY_DIR": str(state / "keys"),
        "REPORTING_OUTBOX_SWEEP_SECONDS": "0.5",
    }
    log = (state / "service.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.reporting"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        while time.monotonic() - start < 60:
            assert proc.poll() is None, (state / "service.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        key_files = list((state / "keys").glob("*.pem"))
        assert all((f.stat().st_mode & 0o077) == 0 for f in key_files)


@dataclass
class InProcess:
    service: Service
    clock: ManualClock
    http: httpx.AsyncClient
    key_dir: Path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reporting(
    infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InProcess]:
    """The service in this process on a manual clock, with its consumers and relay."""
    state = tmp_path_factory.mktemp("reporting-inproc")
    run = uuid.uuid4().hex[:8]
    settings = ReportingSettings(
        kafka_bootstrap=infra["kafka_bootstrap"],
        mongo_uri=infra["mongo_uri"],
        mongo_database=f"it_reporting_{run}",
        service_name=f"reporting-it-{run}",
        trace_dir=state / "traces",
        key_dir=state / "keys",
        outbox_sweep_seconds=0.5,
        public_base_url="https://reports.example",
    )
    clock = ManualClock(SIGNING_TIME)
    service = create_service(settings, clock)
    transport = httpx.ASGITransport(app=service.api)
    async with (
        service.api.router.lifespan_context(service.api),
        httpx.AsyncClient(transport=transport, base_url="http://reporting", timeout=30) as http,
    ):
        yield InProcess(service, clock, http, settings.key_dir)
    client, _ = connect(infra["mongo_uri"], settings.mongo_database)
    await client.drop_database(settings.mongo_database)
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infra: dict[str, Any]) -> AsyncIterator[AIOKafkaProducer]:
    await ensure_topics(infra["kafka_bootstrap"], ALL_TOPICS, 3)
    p = AIOKafkaProducer(
        bootstrap_servers=infra["kafka_bootstrap"], acks="all", enable_idempotence=False
    )
    await p.start()
    yield p
    await p.stop()


async def publish(producer: AIOKafkaProducer, event: Event) -> None:
    headers = ce_headers(
        event_id=new_event_id(), ce_type=event.ce_type(), source="/it", tenant_id=event.tenant_id
    )
    await producer.send_and_wait(
        event.topic,
        event.model_dump_json().encode(),
        key=event.case_id.encode(),
        headers=[(k, v.encode()) for k, v in headers.items()],
    )


def assigned(case_id: str, assignment_id: str, reviewer: str, name: str = "") -> CaseAssigned:
    """A case.assigned (its due date is the assignment's business, read from the wall clock)."""
    return CaseAssigned(
        case_id=case_id,
        tenant_id=TENANT,
        assignment_id=assignment_id,
        reviewer_id=reviewer,
        subspecialty="neuroradiology",
        due_at=datetime.now(UTC) + timedelta(days=2),
        reason="subspecialty match",
        reviewer_name=name,
        reviewer_credentials="MD, ABR Neuroradiology CAQ" if name else "",
    )


async def topic_events(bootstrap: str, topic: str, case_id: str, n: int) -> list[dict[str, Any]]:
    """The first n events of `case_id` on the real topic (a fresh group from earliest)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"it-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:

        async def more() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    if r.key == case_id.encode():
                        found.append({"headers": dict(r.headers), "body": json.loads(r.value)})
            return len(found) >= n

        await eventually(more, within=30)
    finally:
        await consumer.stop()
    return found


async def open_assignment(client: httpx.AsyncClient, reviewer: str, assignment_id: str) -> bool:
    resp = await client.get("/v1/reviewer/assignments", headers=key(reviewer))
    assert resp.status_code == 200, resp.text
    return any(a["assignment_id"] == assignment_id for a in resp.json())


def verify_cli(url: str, report_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.reporting.verify",
            f"{url}/v1/reports/{report_id}",
            "--api-key",
            "demo-partner.dev-secret-demo-partner",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_signed_report_end_to_end(
    reporting: InProcess, producer: AIOKafkaProducer, infra: dict[str, Any]
) -> None:
    client = reporting.http
    case_id, asg = f"case-it-{uuid.uuid4().hex[:8]}", f"asg-{uuid.uuid4().hex[:8]}"
    await publish(producer, assigned(case_id, asg, "rev-neuro-1", "Dr. Ines Moreau"))
    await eventually(lambda: open_assignment(client, "rev-neuro-1", asg))
    # A reviewer not assigned is refused; an incomplete opinion is refused by field.
    other = await client.post(
        f"/v1/assignments/{asg}/opinion", json=opinion_json(), headers=key("rev-neuro-2")
    )
    assert other.status_code == 403
    incomplete = {**opinion_json(), "diagnosis_rationale": ""}
    resp = await client.post(
        f"/v1/assignments/{asg}/opinion", json=incomplete, headers=key("rev-neuro-1")
    )
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/problem+json"
    assert [e["loc"] for e in resp.json()["errors"]] == ["body.diagnosis_rationale"]
    # Draft, then submit the saved draft.
    saved = await client.put(
        f"/v1/assignments/{asg}/draft", json=incomplete, headers=key("rev-neuro-1")
    )
    assert saved.json()["missing"][0]["loc"] == "body.diagnosis_rationale"
    await client.put(
        f"/v1/assignments/{asg}/draft", json=opinion_json(), headers=key("rev-neuro-1")
    )
    reporting.clock.set(SIGNING_TIME + timedelta(hours=3, microseconds=5))
    resp = await client.post(f"/v1/assignments/{asg}/opinion", headers=key("rev-neuro-1"))
    assert resp.status_code == 201, resp.text
    report_id = resp.json()["report_id"]
    again = await client.post(
        f"/v1/assignments/{asg}/opinion", json=opinion_json(), headers=key("rev-neuro-1")
    )
    assert again.status_code == 409  # a signed report is never replaced
    assert not await open_assignment(client, "rev-neuro-1", asg)

    (ready,) = await topic_events(infra["kafka_bootstrap"], "report.ready", case_id, 1)
    event = ReportReady.model_validate(ready["body"])
    # Ids a receiver builds its own links from; the links are informational only.
    assert (event.case_id, event.report_id, event.tenant_id) == (case_id, report_id, TENANT)
    assert event.signed_at == SIGNING_TIME + timedelta(hours=3)  # the clock's, to the second
    assert event.links.report == f"https://reports.example/v1/reports/{report_id}"
    assert "Subacute" not in json.dumps(ready["body"])  # ids, not the opinion

    partner = key("demo-partner")
    bundle = (await client.get(f"/v1/reports/{report_id}", headers=partner)).json()
    assert bundle["report"]["reviewer"]["name"] == "Dr. Ines Moreau"
    assert bundle["report"]["signed_at"] == "2026-11-20T13:00:00+00:00"
    assert bundle["signature"]["content_sha256"] == event.content_sha256
    for path in ("", "/fhir", "/pdf", "/signature"):
        foreign = await client.get(f"/v1/reports/{report_id}{path}", headers=key("other-partner"))
        assert foreign.status_code == 404
    fhir = (await client.get(f"/v1/reports/{report_id}/fhir", headers=partner)).json()
    assert DiagnosticReport.model_validate(fhir).status == "final"
    pdf = (await client.get(f"/v1/reports/{report_id}/pdf", headers=partner)).content
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())
    assert "Subacute infarct rather than neoplasm" in text and "Dr. Ines Moreau" in text

    tampered = {
        **bundle["report"],
        "opinion": {**bundle["report"]["opinion"], "concordance": "confirmed"},
    }
    result = await client.post(
        "/v1/verify", json={"document": tampered, "signature": bundle["signature"]}
    )
    assert result.json()["valid"] is False
    genuine = await client.post(
        "/v1/verify", json={"document": bundle["report"], "signature": bundle["signature"]}
    )
    assert genuine.json() == {"valid": True, "problems": []}

    # A follow-up answer is a signed addendum; the report and its signature stay as they were.
    not_author = await client.post(
        f"/v1/reports/{report_id}/addenda",
        json={"question": "Biopsy?", "answer": "Yes."},
        headers=key("rev-neuro-2"),
    )
    assert not_author.status_code == 403
    reporting.clock.advance(timedelta(days=1))
    added = await client.post(
        f"/v1/reports/{report_id}/addenda",
        json={"question": "Is a biopsy needed?", "answer": "Not before the follow-up MRI."},
        headers=key("rev-neuro-1"),
    )
    assert added.status_code == 201
    after = (await client.get(f"/v1/reports/{report_id}", headers=partner)).json()
    assert after["report"] == bundle["report"] and after["signature"] == bundle["signature"]
    (addendum,) = after["addenda"]
    assert addendum["addendum"]["report_sha256"] == event.content_sha256
    assert addendum["addendum"]["signed_at"] == "2026-11-21T13:00:00+00:00"
    (add_event,) = await topic_events(infra["kafka_bootstrap"], "report.addendum", case_id, 1)
    parsed = ReportAddendum.model_validate(add_event["body"])
    assert (parsed.report_id, parsed.addendum_id) == (report_id, added.json()["addendum_id"])
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert [k["owner"] for k in jwks["keys"]] == ["rev-neuro-1"]
    assert all("d" not in k for k in jwks["keys"])
    # A partner's JOSE library, from the published keys alone, reads the signed report.
    assert joserfc_payload(bundle["signature"]["jws"], jwks) == bundle["report"]
    assert joserfc_payload(addendum["signature"]["jws"], jwks) == addendum["addendum"]
    assert all((f.stat().st_mode & 0o077) == 0 for f in reporting.key_dir.glob("*.pem"))


async def test_reassignment_moves_the_right_to_submit(
    reporting: InProcess, producer: AIOKafkaProducer
) -> None:
    client = reporting.http
    case_id = f"case-it-{uuid.uuid4().hex[:8]}"
    first, second = f"asg-{uuid.uuid4().hex[:8]}", f"asg-{uuid.uuid4().hex[:8]}"
    await publish(producer, assigned(case_id, first, "rev-neuro-1"))
    await eventually(lambda: open_assignment(client, "rev-neuro-1", first))
    reporting.clock.advance(timedelta(minutes=5))  # the later case.assigned is the newer one
    await publish(producer, assigned(case_id, second, "rev-neuro-2"))
    await publish(
        producer,
        CaseReassigned(
            case_id=case_id,
            tenant_id=TENANT,
            assignment_id=second,
            from_reviewer_id="rev-neuro-1",
            to_reviewer_id="rev-neuro-2",
            reason="declined",
        ),
    )
    await eventually(lambda: open_assignment(client, "rev-neuro-2", second))
    assert not await open_assignment(client, "rev-neuro-1", first)
    stale = await client.post(
        f"/v1/assignments/{first}/opinion", json=opinion_json(), headers=key("rev-neuro-1")
    )
    assert stale.status_code == 403
    # The case-addressed route (the demo's reviewer bot) finds the new reviewer's assignment.
    ok = await client.post(
        f"/v1/cases/{case_id}/opinion", json=opinion_json(), headers=key("rev-neuro-2")
    )
    assert ok.status_code == 201, ok.text
    twice = await client.post(
        f"/v1/cases/{case_id}/opinion", json=opinion_json(), headers=key("rev-neuro-2")
    )
    assert twice.status_code == 409  # already reported: an addendum, not a second opinion


async def test_the_process_serves_and_the_partner_command_verifies_over_http(
    reporting_process: str, producer: AIOKafkaProducer
) -> None:
    case_id, asg = f"case-it-{uuid.uuid4().hex[:8]}", f"asg-{uuid.uuid4().hex[:8]}"
    await publish(producer, assigned(case_id, asg, "rev-neuro-1", "Dr. Ines Moreau"))
    async with httpx.AsyncClient(base_url=reporting_process, timeout=30) as client:
        await eventually(lambda: open_assignment(client, "rev-neuro-1", asg))
        resp = await client.post(
            f"/v1/assignments/{asg}/opinion", json=opinion_json(), headers=key("rev-neuro-1")
        )
        assert resp.status_code == 201, resp.text
        report_id = resp.json()["report_id"]
        added = await client.post(
            f"/v1/reports/{report_id}/addenda",
            json={"question": "Is a biopsy needed?", "answer": "Not before the follow-up MRI."},
            headers=key("rev-neuro-1"),
        )
        assert added.status_code == 201
    checked = verify_cli(reporting_process, report_id)
    assert checked.returncode == 0 and checked.stdout.startswith("VALID"), checked.stdout
    assert "1 addenda verified" in checked.stdout


async def test_the_report_names_the_case_from_case_accepted_and_records_complete(
    reporting: InProcess, producer: AIOKafkaProducer
) -> None:
    """What intake and records_fetch said about the case, consumed from the real
    topics into reporting's own `cases` collection, is signed into the report and
    printed on every page; the FHIR report quotes the served PDF's size and hash."""
    client, partner = reporting.http, key("demo-partner")
    case_id, asg = f"case-it-{uuid.uuid4().hex[:8]}", f"asg-{uuid.uuid4().hex[:8]}"
    # The example case without its CJK text (that round trip is a unit test's; the
    # fallback font would triple the rendering time here).
    patient = reporting_case.PATIENT.model_copy(update={"name": "Juergen Mueller-Lukasz"})
    details = reporting_case.CASE.model_copy(
        update={"patient": patient, "question": reporting_case.QUESTION.split(" patient's")[0]}
    )
    routing = RoutingContext(subspecialties=["neuroradiology"], jurisdiction="US-CA")
    # records.complete first: the two topics are not ordered with each other.
    await publish(
        producer,
        RecordsComplete(
            case_id=case_id,
            tenant_id=TENANT,
            routing=routing,
            manifest=details.materials or [],
            completed_at=datetime(2026, 11, 18, 14, 0, tzinfo=UTC),
        ),
    )
    await publish(
        producer,
        CaseAccepted(
            case_id=case_id,
            tenant_id=TENANT,
            external_id=details.external_id,
            routing=routing,
            records=[],
            patient=details.patient,
            question=details.question,
            first_opinion=details.first_opinion,
            treating_clinician_email=details.treating_clinician_email,
            request_reference=details.request_reference,
            diagnoses=details.diagnoses,
        ),
    )
    await publish(
        producer,
        assigned(case_id, asg, "rev-neuro-1", "Dr. Ines Moreau").model_copy(
            update={"reviewer_npi": "1234567802", "reviewer_licence_jurisdiction": "US-CA"}
        ),
    )
    cases = reporting.service.collection("cases")

    async def case_known() -> bool:
        doc = await cases.find_one({"_id": case_id})
        return bool(doc and doc.get("accepted") and doc.get("manifest"))

    await eventually(case_known, within=30)
    await eventually(lambda: open_assignment(client, "rev-neuro-1", asg))
    resp = await client.post(
        f"/v1/assignments/{asg}/opinion",
        json=reporting_case.opinion_json(),
        headers=key("rev-neuro-1"),
    )
    assert resp.status_code == 201, resp.text
    report_id = resp.json()["report_id"]

    signed = (await client.get(f"/v1/reports/{report_id}", headers=partner)).json()["report"]
    assert signed["patient"]["identifiers"][0]["value"] == "MRN-0042817"
    assert signed["clinical_question"] == details.question
    assert signed["case_reference"]["request_reference"] == "ServiceRequest/sr-118"
    assert signed["reviewer"]["npi"] == "1234567802"
    assert [m["kind"] for m in signed["materials_reviewed"]][:2] == ["imaging", "reports"]

    pdf = (await client.get(f"/v1/reports/{report_id}/pdf", headers=partner)).content
    pages = [" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(pdf)).pages]
    for n, text in enumerate(pages, start=1):
        assert f"Patient: {details.patient.name}" in text  # type: ignore[union-attr]
        assert report_id in text and f"Page {n} of {len(pages)}" in text
    fhir = (await client.get(f"/v1/reports/{report_id}/fhir", headers=partner)).json()
    (form,) = fhir["presentedForm"]
    assert form["url"] == f"https://reports.example/v1/reports/{report_id}/pdf"
    assert form["size"] == len(pdf)
    assert (
        form["hash"] == base64.b64encode(hashlib.sha1(pdf, usedforsecurity=False).digest()).decode()
    )
    assert fhir["subject"]["identifier"]["value"] == "MRN-0042817"
    assert fhir["basedOn"] == [{"reference": "ServiceRequest/sr-118", "type": "ServiceRequest"}]
    published = await client.get("/fhir/CodeSystem/concordance")
    assert published.status_code == 200
    assert published.headers["content-type"].startswith("application/fhir+json")
    assert published.json()["url"] == fhir["conclusionCode"][0]["coding"][0]["system"]

"""The reporting service as a process against the real broker and database:
case.assigned consumed from the real topic, opinions submitted over HTTP,
report.ready / report.addendum read back from the real topics, reports fetched
as JSON, FHIR and PDF by the tenant's partner and verified with the partner's
command; reassignment, wrong reviewers, other tenants and tampering refused."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pypdf import PdfReader

from shared.envelope import ce_headers, new_event_id
from shared.events import ALL_TOPICS, CaseAssigned, CaseReassigned, ReportAddendum, ReportReady
from shared.runtime import ensure_topics
from tests.conftest import REPO, eventually
from tests.unit.test_reporting_domain import opinion_json

TENANT = "demo-health"


def key(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_id}.dev-secret-{key_id}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def reporting(infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
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


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infra: dict[str, Any]) -> AsyncIterator[AIOKafkaProducer]:
    await ensure_topics(infra["kafka_bootstrap"], ALL_TOPICS, 3)
    p = AIOKafkaProducer(
        bootstrap_servers=infra["kafka_bootstrap"], acks="all", enable_idempotence=False
    )
    await p.start()
    yield p
    await p.stop()


async def publish(producer: AIOKafkaProducer, event: CaseAssigned | CaseReassigned) -> None:
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
    reporting: str, producer: AIOKafkaProducer, infra: dict[str, Any]
) -> None:
    case_id, asg = f"case-it-{uuid.uuid4().hex[:8]}", f"asg-{uuid.uuid4().hex[:8]}"
    await publish(producer, assigned(case_id, asg, "rev-neuro-1", "Dr. Ines Moreau"))
    async with httpx.AsyncClient(base_url=reporting, timeout=30) as client:
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
        assert (
            resp.status_code == 422 and resp.headers["content-type"] == "application/problem+json"
        )
        assert [e["loc"] for e in resp.json()["errors"]] == ["body.diagnosis_rationale"]
        # Draft, then submit the saved draft.
        saved = await client.put(
            f"/v1/assignments/{asg}/draft", json=incomplete, headers=key("rev-neuro-1")
        )
        assert saved.json()["missing"][0]["loc"] == "body.diagnosis_rationale"
        await client.put(
            f"/v1/assignments/{asg}/draft", json=opinion_json(), headers=key("rev-neuro-1")
        )
        resp = await client.post(f"/v1/assignments/{asg}/opinion", headers=key("rev-neuro-1"))
        assert resp.status_code == 201, resp.text
        report_id = resp.json()["report_id"]
        again = await client.post(
            f"/v1/assignments/{asg}/opinion", json=opinion_json(), headers=key("rev-neuro-1")
        )
        assert again.status_code == 409  # a signed report is never replaced

        (ready,) = await topic_events(infra["kafka_bootstrap"], "report.ready", case_id, 1)
        event = ReportReady.model_validate(ready["body"])
        assert event.report_id == report_id and event.links.pdf.endswith(f"{report_id}/pdf")
        assert "Subacute" not in json.dumps(ready["body"])  # links, not the opinion

        partner = key("demo-partner")
        bundle = (await client.get(f"/v1/reports/{report_id}", headers=partner)).json()
        assert bundle["report"]["reviewer"]["name"] == "Dr. Ines Moreau"
        assert bundle["signature"]["content_sha256"] == event.content_sha256
        for path in ("", "/fhir", "/pdf", "/signature"):
            foreign = await client.get(
                f"/v1/reports/{report_id}{path}", headers=key("other-partner")
            )
            assert foreign.status_code == 404
        fhir = (await client.get(event.links.fhir, headers=partner)).json()
        assert DiagnosticReport.model_validate(fhir).status == "final"
        pdf = (await client.get(event.links.pdf, headers=partner)).content
        text = " ".join(
            " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split()
        )
        assert "Subacute infarct rather than neoplasm" in text and "Dr. Ines Moreau" in text

        checked = verify_cli(reporting, report_id)
        assert checked.returncode == 0 and checked.stdout.startswith("VALID"), checked.stdout
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
        added = await client.post(
            f"/v1/reports/{report_id}/addenda",
            json={"question": "Is a biopsy needed?", "answer": "Not before the follow-up MRI."},
            headers=key("rev-neuro-1"),
        )
        assert added.status_code == 201
        after = (await client.get(f"/v1/reports/{report_id}", headers=partner)).json()
        assert after["report"] == bundle["report"] and after["signature"] == bundle["signature"]
        assert after["addenda"][0]["addendum"]["report_sha256"] == event.content_sha256
        checked = verify_cli(reporting, report_id)
        assert checked.returncode == 0 and "1 addenda verified" in checked.stdout, checked.stdout
        (add_event,) = await topic_events(infra["kafka_bootstrap"], "report.addendum", case_id, 1)
        assert (
            ReportAddendum.model_validate(add_event["body"]).addendum_id
            == added.json()["addendum_id"]
        )
        keys = (await client.get("/v1/keys")).json()["keys"]
        assert [k["owner"] for k in keys] == ["rev-neuro-1"] and all("d" not in k for k in keys)


async def test_reassignment_moves_the_right_to_submit(
    reporting: str, producer: AIOKafkaProducer
) -> None:
    case_id = f"case-it-{uuid.uuid4().hex[:8]}"
    first, second = f"asg-{uuid.uuid4().hex[:8]}", f"asg-{uuid.uuid4().hex[:8]}"
    await publish(producer, assigned(case_id, first, "rev-neuro-1"))
    async with httpx.AsyncClient(base_url=reporting, timeout=30) as client:
        await eventually(lambda: open_assignment(client, "rev-neuro-1", first))
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

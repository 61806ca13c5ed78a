"""Intake against the real broker and database: the FastAPI app in-process (with
its lifespan: Kafka consumers, outbox relay) on a fresh Mongo database, and a tap
on the real `case.accepted`, `case.rejected` and `case.submitted.dlq` topics.

Shown here: native and FHIR cases accepted over HTTP and Kafka; a duplicate gives
one case and one `case.accepted`; tenant isolation on reads; a case waiting on
release authorization (visible, with the reason) resuming once; a case held for
human review; the downstream stage followed; and a dozen kinds of bad input, each
with its precise error, a PHI-free rejection record and no partial case.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.intake import domain
from services.intake.app import create_service
from services.intake.settings import IntakeSettings
from shared.clock import ManualClock
from shared.consumer import raw_body
from shared.envelope import ce_headers
from shared.events import (
    CaseAssigned,
    ManifestItem,
    NotificationDelivered,
    RecordsComplete,
    RecordsIncomplete,
    ReportLinks,
    ReportReady,
    ReportSubmitted,
    RoutingContext,
)
from shared.runtime import Service
from shared.store import connect
from tests.conftest import eventually
from tests.unit.test_intake_fhir import fhir_bundle, native_case

pytestmark = pytest.mark.integration
DEMO = {"Authorization": "Bearer demo-int.dev-secret-demo-int"}
OTHER = {"Authorization": "Bearer other-int.dev-secret-other-int"}
OPS = {"Authorization": "Bearer ops.dev-secret-ops"}
FHIR_JSON = {"content-type": "application/fhir+json"}
TAPPED = ("case.accepted", "case.rejected", "case.submitted.dlq", "case.rerouted")
INTEGRATOR_SECRET = b"the integrator's own key-derivation secret"


@dataclass
class Intake:
    service: Service
    http: httpx.AsyncClient
    tap: KafkaBroker
    run: str
    seen: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TAPPED})

    def events(self, topic: str, case_id: str) -> list[dict[str, Any]]:
        return [m for m in self.seen[topic] if m["key"] == case_id]

    async def publish(self, body: bytes, key: str, event_id: str | None = None) -> str:
        """Publish as an integrator should: keyed by an opaque value (an HMAC of `key`
        under the integrator's own secret), never by the external id itself."""
        event_id = event_id or str(uuid.uuid4())
        opaque = hmac.new(INTEGRATOR_SECRET, key.encode(), hashlib.sha256).hexdigest()
        headers = ce_headers(
            event_id=event_id,
            ce_type="org.secondopinion.case.submitted.v1",
            source="/it/integrator",
            tenant_id="demo-health",
        )
        await self.tap.publish(body, topic="case.submitted", key=opaque.encode(), headers=headers)
        return event_id

    async def find_case(self, external_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            return await self.service.db["cases"].find_one({"external_id": external_id})

        return dict(await eventually(check, within=30))

    async def wait_for(self, topic: str, case_id: str) -> list[dict[str, Any]]:
        async def check() -> list[dict[str, Any]]:
            return self.events(topic, case_id)

        return list(await eventually(check, within=30))


def providers_file(directory: Path) -> Path:
    """The provider registry (shared/providers.py) the tenants' test cases name."""
    pacs = {"dicomweb_url": "http://127.0.0.1:9/dicom-web"}
    registry = {
        tenant: {"valley-imaging": pacs, "valley-clinic": pacs, "p": pacs}
        for tenant in ("demo-health", "other-clinic")
    }
    path = directory / "providers.json"
    path.write_text(json.dumps(registry))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def intake(
    infra: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Intake]:
    run = uuid.uuid4().hex[:8]
    settings = IntakeSettings(
        kafka_bootstrap=infra["kafka_bootstrap"],
        mongo_uri=infra["mongo_uri"],
        mongo_database=f"intake_it_{run}",
        trace_dir=Path(tmp_path_factory.mktemp("traces")),
        outbox_sweep_seconds=0.5,
        max_body_bytes=50_000,
        providers_file=providers_file(Path(tmp_path_factory.mktemp("providers"))),
    )
    service = create_service(settings, ManualClock())
    tap = KafkaBroker(infra["kafka_bootstrap"])
    it = Intake(service, httpx.AsyncClient(), tap, run)
    tap.subscriber(
        *TAPPED,
        group_id=f"tap-{run}",
        auto_offset_reset="earliest",
        decoder=raw_body,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )(_recorder(it))
    transport = httpx.ASGITransport(app=service.api)
    async with service.api.router.lifespan_context(service.api), tap:
        await tap.start()
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
            it.http = http
            yield it
    client, _ = connect(infra["mongo_uri"], settings.mongo_database)
    await client.drop_database(settings.mongo_database)
    await client.close()


def _recorder(it: Intake) -> Any:
    async def record(message: KafkaMessage) -> None:
        raw = message.raw_message
        assert not isinstance(raw, tuple)
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in message.headers.items()}
        try:
            body = json.loads(raw.value or b"")
        except ValueError:
            body = None
        key = (raw.key or b"").decode(errors="replace")
        it.seen[raw.topic].append({"key": key, "headers": headers, "body": body})

    return record


def ext(it: Intake, name: str) -> str:
    return f"it-{it.run}-{name}"


async def accepted_once(it: Intake, case_id: str) -> dict[str, Any]:
    events = await it.wait_for("case.accepted", case_id)
    return dict(events[0]["body"])


async def _async(value: Any) -> Any:
    return value


async def test_native_and_fhir_cases_are_accepted_over_http_and_kafka(intake: Intake) -> None:
    it = intake
    native = await it.http.post("/v1/cases", json=native_case(ext(it, "native")), headers=DEMO)
    assert native.status_code == 201, native.text
    fhir_route = await it.http.post(
        "/v1/fhir/ServiceRequest",
        content=json.dumps(fhir_bundle(ext(it, "fhir"))),
        headers={**DEMO, **FHIR_JSON},
    )
    fhir_ctype = await it.http.post(
        "/v1/cases",
        content=json.dumps(fhir_bundle(ext(it, "fhir-ct"))),
        headers={**DEMO, **FHIR_JSON},
    )
    assert fhir_route.status_code == 201 and fhir_ctype.status_code == 201, fhir_route.text
    body = json.dumps({"tenant_id": "demo-health", "fhir": fhir_bundle(ext(it, "fhir-kafka"))})
    await it.publish(body.encode(), ext(it, "fhir-kafka"))
    body = json.dumps({"tenant_id": "demo-health", "submission": native_case(ext(it, "kafka"))})
    await it.publish(body.encode(), ext(it, "kafka"))

    ids = [r.json()["case_id"] for r in (native, fhir_route, fhir_ctype)]
    for name in ("fhir-kafka", "kafka"):
        ids.append((await it.find_case(ext(it, name)))["_id"])
    for case_id in ids:
        event = await accepted_once(it, case_id)
        # Who is needed (the order, primary first, is the clinical suite's business).
        assert set(event["routing"]["subspecialties"]) >= {
            "body_imaging",
            "oncology_genitourinary",
        }
        assert "irreversible_treatment" in event["triage_signals"]
        assert "'cannot exclude'" in event["triage_reasons"]["ambiguous_report"].lower()
    fhir_event = await accepted_once(it, ids[1])
    assert fhir_event["routing"]["urgency"] == "priority"  # FHIR priority 'urgent'
    assert fhir_event["routing"]["service_tier"] == "imaging_reread"

    status = (await it.http.get(f"/v1/cases/{ids[0]}", headers=DEMO)).json()
    assert status["stage"] == "accepted"
    assert status["waiting_reasons"] == ["the records: retrieval from the providers is under way"]
    assert status["second_opinion_value"] == "high"
    # Dated by the service's clock (ManualClock), not the machine's.
    assert status["history"][0]["at"].startswith("2026-01-05T09:00:00")
    assert {s["name"] for s in status["subspecialties"]} >= {
        "body_imaging",
        "oncology_genitourinary",
    }

    # The status follows the case downstream (records_complete from records_fetch).
    done = RecordsComplete(
        case_id=ids[0],
        tenant_id="demo-health",
        routing=RoutingContext(subspecialties=["body_imaging"], jurisdiction="US-CA"),
        manifest=[ManifestItem(kind="imaging", present=True, count=3)],
        completed_at=datetime.now(UTC),
    )
    headers = ce_headers(
        event_id=str(uuid.uuid4()),
        ce_type=RecordsComplete.ce_type(),
        source="/it/records_fetch",
        tenant_id="demo-health",
    )
    await it.tap.publish(
        done.model_dump_json().encode(),
        topic="records.complete",
        key=ids[0].encode(),
        headers=headers,
    )

    async def stage() -> bool:
        r = await it.http.get(f"/v1/cases/{ids[0]}", headers=DEMO)
        return bool(r.json()["stage"] == "records_complete")

    await eventually(stage, within=30)


async def test_a_duplicate_submission_is_one_case_and_one_accepted_event(intake: Intake) -> None:
    it = intake
    case = native_case(ext(it, "dup"))
    first = await it.http.post("/v1/cases", json=case, headers=DEMO)
    again = await it.http.post("/v1/cases", json=case, headers=DEMO)
    assert (first.status_code, again.status_code) == (201, 200)
    case_id = first.json()["case_id"]
    assert again.json() == {"case_id": case_id, "stage": "accepted", "created": False}
    # The same case over Kafka: the same event twice (a redelivery) and a new event id.
    body = json.dumps({"tenant_id": "demo-health", "submission": case}).encode()
    event_id = await it.publish(body, case["external_id"])
    await it.publish(body, case["external_id"], event_id)
    await it.publish(body, case["external_id"])
    # A later case on the same key (same partition): once it is accepted, the
    # duplicates before it have been handled.
    sentinel = native_case(ext(it, "dup-sentinel"))
    await it.publish(
        json.dumps({"tenant_id": "demo-health", "submission": sentinel}).encode(),
        case["external_id"],
    )
    found = await it.find_case(sentinel["external_id"])
    await accepted_once(it, found["_id"])
    assert await it.service.db["cases"].count_documents({"external_id": case["external_id"]}) == 1
    assert len(it.events("case.accepted", case_id)) == 1


async def test_a_tenant_cannot_read_another_tenants_case(intake: Intake) -> None:
    it = intake
    r = await it.http.post("/v1/cases", json=native_case(ext(it, "tenant-a")), headers=DEMO)
    case_id = r.json()["case_id"]
    assert (await it.http.get(f"/v1/cases/{case_id}", headers=DEMO)).status_code == 200
    other = await it.http.get(f"/v1/cases/{case_id}", headers=OTHER)
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"
    listed = (await it.http.get("/v1/cases", headers=OTHER)).json()
    assert case_id not in [c["case_id"] for c in listed]
    auth = await it.http.post(
        f"/v1/cases/{case_id}/authorizations", json={"provider_id": "valley-clinic"}, headers=OTHER
    )
    assert auth.status_code == 404
    # The same external id from tenant B is tenant B's own, different case.
    b = await it.http.post("/v1/cases", json=native_case(ext(it, "tenant-a")), headers=OTHER)
    assert b.status_code == 201 and b.json()["case_id"] != case_id


async def test_a_case_waits_for_release_authorization_and_resumes_once(intake: Intake) -> None:
    it = intake
    case = native_case(ext(it, "consent"))
    case["records"][1]["authorized"] = False
    r = await it.http.post("/v1/cases", json=case, headers=DEMO)
    assert r.status_code == 201 and r.json()["stage"] == "awaiting_authorization"
    case_id = r.json()["case_id"]
    status = (await it.http.get(f"/v1/cases/{case_id}", headers=DEMO)).json()
    assert status["waiting_on_authorization"] == ["valley-clinic"]
    assert status["waiting_reasons"] == [
        "release authorization missing for provider 'valley-clinic'"
    ]
    unknown = await it.http.post(
        f"/v1/cases/{case_id}/authorizations", json={"provider_id": "nowhere"}, headers=DEMO
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["loc"] == "provider_id"

    grant = {"provider_id": "valley-clinic", "reference": "doc-store://auth/123"}
    first = await it.http.post(f"/v1/cases/{case_id}/authorizations", json=grant, headers=DEMO)
    again = await it.http.post(f"/v1/cases/{case_id}/authorizations", json=grant, headers=DEMO)
    assert first.json()["stage"] == again.json()["stage"] == "accepted"
    assert not any("authorization" in w for w in first.json()["waiting_reasons"])
    event = await accepted_once(it, case_id)
    assert [r["authorized"] for r in event["records"]] == [True, True]
    sentinel = await it.http.post("/v1/cases", json=native_case(ext(it, "c-s")), headers=DEMO)
    await accepted_once(it, sentinel.json()["case_id"])
    assert len(it.events("case.accepted", case_id)) == 1


async def test_a_controlled_substance_request_is_held_for_human_review(intake: Intake) -> None:
    it = intake
    case = native_case(
        ext(it, "hold"),
        question="My doctor refused to refill my oxycodone; I want a second opinion to renew it",
    )
    r = await it.http.post("/v1/cases", json=case, headers=DEMO)
    case_id = r.json()["case_id"]
    status = (await it.http.get(f"/v1/cases/{case_id}", headers=DEMO)).json()
    assert status["stage"] == "held_for_review"
    reason = status["waiting_reasons"][0]
    assert "controlled-substance prescription" in reason and "'oxycodone'" in reason
    assert (
        await it.http.post(f"/v1/cases/{case_id}/review", json={"release": False}, headers=DEMO)
    ).status_code == 403
    declined = await it.http.post(
        f"/v1/cases/{case_id}/review",
        json={"release": False, "note": "prescription request, not a second opinion"},
        headers=OPS,
    )
    assert declined.json()["stage"] == "declined"
    rejected = await it.wait_for("case.rejected", case_id)
    assert rejected[0]["body"]["errors"][0]["type"] == "not_a_second_opinion"
    assert it.events("case.accepted", case_id) == []


def _bad_requests(it: Intake) -> list[tuple[str, dict[str, Any], int, str]]:
    """(name, request kwargs, status, 'loc|type' of the first error or the title)."""

    def native(name: str, **over: Any) -> dict[str, Any]:
        return native_case(ext(it, name), **over)

    no_patient = native("bad-missing")
    del no_patient["patient"]
    bad_fhir = fhir_bundle(ext(it, "bad-fhir-subject"))
    bad_fhir["entry"][0]["resource"]["subject"] = {"reference": "Patient/unknown"}
    big = json.dumps(native("bad-big", question="x" * 60_000)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(60):
            yield b" " * 1000

    return [
        ("no credentials", {"json": native("bad-noauth"), "headers": {}}, 401, "Unauthorized"),
        ("wrong role", {"json": native("bad-role"), "headers": OPS}, 403, "Forbidden"),
        (
            "malformed JSON",
            {
                "content": b'{"external_id": "x",',
                "headers": {**DEMO, "content-type": "application/json"},
            },
            400,
            "body|json_invalid",
        ),
        (
            "not JSON media type",
            {
                "content": b"external_id=x",
                "headers": {**DEMO, "content-type": "application/x-www-form-urlencoded"},
            },
            415,
            "Unsupported media type",
        ),
        (
            "declared oversize",
            {"content": big, "headers": {**DEMO, "content-type": "application/json"}},
            413,
            "Payload too large",
        ),
        (
            "streamed oversize",
            {"content": chunks(), "headers": {**DEMO, "content-type": "application/json"}},
            413,
            "Payload too large",
        ),
        ("JSON not an object", {"json": [1, 2], "headers": DEMO}, 422, "body|model_type"),
        ("missing patient", {"json": no_patient, "headers": DEMO}, 422, "patient|missing"),
        (
            "bad birth date",
            {
                "json": native(
                    "bad-date",
                    patient={
                        "name": "Ann Example",
                        "birth_date": "02/03/1958",
                        "jurisdiction": "US-CA",
                    },
                ),
                "headers": DEMO,
            },
            422,
            "patient.birth_date|string_pattern_mismatch",
        ),
        (
            "unknown field",
            {"json": native("bad-extra", ssn="000-00-0000"), "headers": DEMO},
            422,
            "ssn|extra_forbidden",
        ),
        (
            "no records",
            {"json": native("bad-norecords", records=[]), "headers": DEMO},
            422,
            "records|too_short",
        ),
        (
            "unknown record kind",
            {
                "json": native(
                    "bad-kind",
                    records=[
                        {
                            "provider_id": "p",
                            "patient_id": "1",
                            "kinds": ["x-ray"],
                            "authorized": True,
                        }
                    ],
                ),
                "headers": DEMO,
            },
            422,
            "records.0.kinds.0|enum",
        ),
        (
            "question too short",
            {"json": native("bad-short", question="MRI?"), "headers": DEMO},
            422,
            "question|string_too_short",
        ),
        (
            "bad urgency",
            {"json": native("bad-urgency", urgency="asap"), "headers": DEMO},
            422,
            "urgency|enum",
        ),
        (
            "FHIR wrong resource",
            {"content": json.dumps({"resourceType": "Patient"}), "headers": {**DEMO, **FHIR_JSON}},
            422,
            "resourceType|resource_type",
        ),
        (
            "FHIR dangling subject",
            {"content": json.dumps(bad_fhir), "headers": {**DEMO, **FHIR_JSON}},
            422,
            "Bundle.entry[0].resource.subject|required",
        ),
    ]


async def test_bad_input_gets_its_precise_error_and_leaves_no_partial_state(intake: Intake) -> None:
    it = intake
    cases_before = await it.service.db["cases"].count_documents({})
    rejections_before = await it.service.db["rejections"].count_documents({})
    # A case whose reuse with other content is a conflict.
    kept = native_case(ext(it, "bad-conflict"))
    assert (await it.http.post("/v1/cases", json=kept, headers=DEMO)).status_code == 201
    changed = {**kept, "question": "Second opinion on knee MRI: is this a meniscal tear?"}
    bad = [
        *_bad_requests(it),
        ("idempotency key reused", {"json": changed, "headers": DEMO}, 409, "external_id|conflict"),
    ]
    assert len(bad) >= 10
    outcomes = {}
    for name, kwargs, status, _ in bad:
        r = await it.http.post("/v1/cases", **kwargs)
        assert r.status_code == status, (name, r.text)
        if r.headers["content-type"] == "application/fhir+json":  # FHIR clients: OperationOutcome
            issue = r.json()["issue"][0]
            got = f"{issue['diagnostics']}|{issue['details']['coding'][0]['code']}"
            outcomes[name] = got
            continue
        assert r.headers["content-type"] == "application/problem+json", name
        problem = r.json()
        errors = problem.get("errors", [])
        got = f"{errors[0]['loc']}|{errors[0]['type']}" if errors else problem["title"]
        outcomes[name] = got
    assert outcomes == {name: expected for name, _, _, expected in bad}
    # No partial state: only the one good case was created; every refused, authenticated,
    # read request left a rejection record, without the submitted values.
    assert await it.service.db["cases"].count_documents({}) == cases_before + 1
    recorded = await it.service.db["rejections"].find({}).to_list()
    # Not recorded: 401 and 403 (no case of the caller), and both oversize bodies, which
    # the shared request gate refuses before the route (and its rejection log) runs.
    assert len(recorded) - rejections_before == len(bad) - 4
    assert "Ann Example" not in str(recorded) and "000-00-0000" not in str(recorded)


async def test_bad_kafka_submissions_are_rejected_or_dead_lettered(intake: Intake) -> None:
    it = intake

    async def send(name: str, envelope: dict[str, Any]) -> str:
        return await it.publish(json.dumps(envelope).encode(), ext(it, name))

    def native(name: str, **over: Any) -> dict[str, Any]:
        return native_case(ext(it, name), **over)

    kept = native("k-conflict")
    assert (await it.http.post("/v1/cases", json=kept, headers=DEMO)).status_code == 201
    changed = {**kept, "question": "Second opinion on knee MRI: is this a meniscal tear?"}
    bad_fhir = fhir_bundle(ext(it, "k-fhir"))
    del bad_fhir["entry"][0]["resource"]["identifier"]
    del bad_fhir["entry"][0]["resource"]["id"]  # without either, nothing identifies it
    t = "demo-health"
    sent = {
        "k-invalid": await send(
            "k-invalid", {"tenant_id": t, "submission": native("k-invalid", records=[])}
        ),
        "k-conflict": await send("k-conflict", {"tenant_id": t, "submission": changed}),
        "k-both": await send(
            "k-both", {"tenant_id": t, "submission": native("k-both"), "fhir": fhir_bundle()}
        ),
        "k-fhir": await send("k-fhir", {"tenant_id": t, "fhir": bad_fhir}),
    }
    expected = {
        "k-invalid": "submission.records|too_short",
        "k-conflict": "external_id|conflict",
        "k-both": "submission|one_of",
        "k-fhir": "Bundle.entry[0].resource.identifier|required",
    }
    garbage_id = await it.publish(b"\xff\xfe not json", ext(it, "k-garbage"))
    unknown_tenant = await it.publish(
        json.dumps({"tenant_id": "nobody", "submission": native("k-tenant")}).encode(), "k"
    )

    for name, loc_type in expected.items():
        # A FHIR case without its identifier has no external id: keyed by the event id.
        key = domain.case_id_for(t, ext(it, name) if name != "k-fhir" else sent[name])
        found = await it.wait_for("case.rejected", key)
        error = found[-1]["body"]["errors"][0]
        assert f"{error['loc']}|{error['type']}" == loc_type, name
        record = await it.service.db["rejections"].find_one({"_id": f"event:{sent[name]}"})
        assert record is not None and record["channel"] == "kafka"

    def dead_lettered(event_id: str) -> Any:
        return lambda: _async(
            [m for m in it.seen["case.submitted.dlq"] if m["headers"].get("ce_id") == event_id]
        )

    dead = await eventually(dead_lettered(garbage_id), within=30)
    assert dead[0]["headers"]["dlq_reason"].startswith("schema validation failed")
    dead = await eventually(dead_lettered(unknown_tenant), within=30)
    assert "tenant" in dead[0]["headers"]["dlq_reason"]
    for name in ("k-invalid", "k-both", "k-fhir", "k-tenant"):
        assert await it.service.db["cases"].count_documents({"external_id": ext(it, name)}) == 0
    assert await it.service.db["cases"].count_documents({"external_id": ext(it, "k-conflict")}) == 1


async def emit(it: Intake, event: Any, topic: str) -> None:
    """Publish a downstream service's event on its real topic."""
    headers = ce_headers(
        event_id=str(uuid.uuid4()),
        ce_type=event.ce_type(),
        source="/it/downstream",
        tenant_id=event.tenant_id,
    )
    await it.tap.publish(
        event.model_dump_json().encode(), topic=topic, key=event.case_id.encode(), headers=headers
    )


async def test_notices_and_dead_letters_show_in_delivery_and_never_move_the_stage(
    intake: Intake,
) -> None:
    """The status lied: any notification.delivered read `delivered`. A delivered
    records.incomplete notice and a dead-lettered report webhook now show in the
    partner's delivery entry and leave the stage where it was."""
    it = intake
    r = await it.http.post("/v1/cases", json=native_case(ext(it, "notices")), headers=DEMO)
    case_id = r.json()["case_id"]
    ids = {"case_id": case_id, "tenant_id": "demo-health"}
    missing = ManifestItem(
        kind="imaging", present=False, detail="prior_studies: no prior study found at the provider"
    )
    await emit(it, RecordsIncomplete(**ids, missing=[missing], attempt=1), "records.incomplete")
    sent = NotificationDelivered(
        **ids,
        delivery_id="d-1",
        event_type="records.incomplete",
        channel="webhook",
        status="delivered",
    )
    await emit(it, sent, "notification.delivered")

    async def status(check: Any) -> dict[str, Any] | None:
        body = (await it.http.get(f"/v1/cases/{case_id}", headers=DEMO)).json()
        return dict(body) if check(body) else None

    missing_words = "the records: prior_studies: no prior study found at the provider"

    def noticed(body: dict[str, Any]) -> bool:
        # The notice (notification.delivered) and the manifest (records.incomplete)
        # come on two topics, in either order: wait for both.
        notices = body["delivery"].get("partner", {}).get("notices")
        return bool(notices) and missing_words in body["waiting_reasons"]

    body = await eventually(lambda: status(noticed), within=30)
    assert body["stage"] == "accepted"
    assert body["delivery"]["partner"]["report"] == "not_sent"
    assert (
        "the records: prior_studies: no prior study found at the provider"
        in body["waiting_reasons"]
    )

    routing = RoutingContext(subspecialties=["body_imaging"], jurisdiction="US-CA")
    now = datetime.now(UTC)
    await emit(
        it,
        RecordsComplete(**ids, routing=routing, manifest=[], completed_at=now),
        "records.complete",
    )
    await emit(
        it,
        CaseAssigned(
            **ids,
            assignment_id="a",
            reviewer_id="rev-1",
            subspecialty="body_imaging",
            due_at=now,
            reason="matched",
        ),
        "case.assigned",
    )
    await emit(
        it,
        ReportSubmitted(**ids, report_id="r", reviewer_id="rev-1", concordance="confirmed"),
        "report.submitted",
    )
    links = ReportLinks(report="https://reporting.example/v1/reports/r")
    ready = ReportReady(
        **ids,
        report_id="r",
        reviewer_id="rev-1",
        concordance="confirmed",
        signed_at=now,
        content_sha256="0" * 64,
        links=links,
    )
    await emit(it, ready, "report.ready")
    dead = sent.model_copy(
        update={"delivery_id": "d-2", "event_type": "report.ready", "status": "dead_letter"}
    )
    await emit(it, dead, "notification.delivered")

    def failed(body: dict[str, Any]) -> bool:
        return body["stage"] == "report_ready" and body["delivery"]["partner"]["report"] == "failed"

    body = await eventually(lambda: status(failed), within=30)
    assert [h["stage"] for h in body["history"]] == [
        "accepted",
        "records_complete",
        "assigned",
        "report_submitted",
        "report_ready",
    ]
    assert body["waiting_reasons"] == [
        "delivery of the report to the partner: failed (dead letter); "
        "resend it from notify's delivery log"
    ]
    task = await it.http.get(f"/v1/fhir/Task/{case_id}", headers=DEMO)
    assert task.headers["content-type"] == "application/fhir+json"
    assert task.json()["businessStatus"]["coding"][0]["code"] == "report_ready"
    assert (await it.http.get(f"/v1/fhir/Task/{case_id}", headers=OTHER)).status_code == 404


async def test_an_unregistered_provider_is_refused_with_the_field_named(intake: Intake) -> None:
    it = intake
    case = native_case(ext(it, "unregistered"))
    case["records"][1]["provider_id"] = "nowhere-clinic"
    r = await it.http.post("/v1/cases", json=case, headers=DEMO)
    assert r.status_code == 422
    (error,) = r.json()["errors"]
    assert (error["loc"], error["type"]) == ("records.1.provider_id", "unregistered_provider")
    assert "register it, then submit the case again" in error["msg"]
    assert (
        await it.http.get(
            f"/v1/cases/{domain.case_id_for('demo-health', case['external_id'])}", headers=DEMO
        )
    ).status_code == 404

    body = json.dumps({"tenant_id": "demo-health", "submission": case})
    await it.publish(body.encode(), case["external_id"])
    case_id = domain.case_id_for("demo-health", case["external_id"])
    (rejected,) = await it.wait_for("case.rejected", case_id)
    assert [(e["loc"], e["type"]) for e in rejected["body"]["errors"]] == [
        ("records.1.provider_id", "unregistered_provider")
    ]

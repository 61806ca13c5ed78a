"""Hostile input to intake (issue 15, finding 8), in-process: the intake app on an
ASGI transport with a store that keeps rejections in memory (any other use of
the store fails the test), and the `case.submitted` consumer fed raw Kafka
records. No process, broker or database is needed: what is attacked here is
intake's reading of its input, which happens before any of them is used.

Each hostile body was a 500 before (RecursionError, ValueError from CPython's
int-conversion limit, UnicodeEncodeError from a lone surrogate), a 10,000-entry
Bundle stalled the event loop, and bad JSON without a key was a 422, not a 401.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv.trace import SpanAttributes

from services.intake import fhir, handlers
from services.intake.app import CaseSubmittedEnvelope, create_service
from services.intake.documents import RejectionDocument
from services.intake.settings import IntakeSettings
from services.intake.store import IntakeStore
from services.intake.telemetry import REDACTED, IntegratorKeyRedaction
from shared.clock import ManualClock
from shared.consumer import EventConsumer
from shared.envelope import OutboxEntry, ce_headers
from shared.runtime import Service
from tests.fakes import MemoryAuditCollection
from tests.unit.test_intake_fhir import fhir_bundle, native_case

DEMO = {"Authorization": "Bearer demo-int.dev-secret-demo-int"}
JSON = {"content-type": "application/json"}
FHIR_JSON = {"content-type": "application/fhir+json"}
ROUTES = [
    ("/v1/cases", JSON),
    ("/v1/cases", FHIR_JSON),
    ("/v1/fhir/ServiceRequest", FHIR_JSON),
]
DEEP = b'{"external_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = b'{"external_id": ' + b"9" * 5_000 + b"}"
MRN = "MRN-HOSTILE-4471"


class RejectionsOnly(IntakeStore):
    """Keeps rejections in memory. A hostile input must be refused before a case is
    looked up or stored, so every other store method fails (no collections)."""

    def __init__(self) -> None:
        self.rejections_seen: dict[str, dict[str, Any]] = {}

    async def record_rejection(
        self, rejection: RejectionDocument, outbox: list[OutboxEntry]
    ) -> bool:
        if rejection.id in self.rejections_seen:
            return False
        doc = rejection.model_dump(mode="json")
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # storable: valid Unicode throughout
        self.rejections_seen[rejection.id] = doc
        return True


@dataclass
class Rig:
    service: Service
    store: RejectionsOnly
    clock: ManualClock
    http: httpx.AsyncClient
    traces: Path


@pytest_asyncio.fixture(loop_scope="session")
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store, clock = RejectionsOnly(), ManualClock()
    settings = IntakeSettings(trace_dir=tmp_path, max_body_bytes=3_000_000)
    service = create_service(settings, clock, store=store)
    service.audit.collection = MemoryAuditCollection()  # type: ignore[assignment]
    transport = httpx.ASGITransport(app=service.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
        yield Rig(service, store, clock, http, tmp_path / "intake.jsonl")
    service.tracer_provider.shutdown()


def first_error(response: httpx.Response) -> str:
    if response.headers["content-type"] == "application/fhir+json":  # a FHIR client's refusal
        issue = response.json()["issue"][0]
        return f"{issue['diagnostics']}|{issue['details']['coding'][0]['code']}"
    assert response.headers["content-type"] == "application/problem+json", response.text
    error = response.json()["errors"][0]
    return f"{error['loc']}|{error['type']}"


def surrogate_case() -> bytes:
    """A native case whose external_id is a lone surrogate, as JSON text sends it."""
    return json.dumps(native_case("PLACEHOLDER")).replace("PLACEHOLDER", "\\ud800").encode()


def surrogate_bundle() -> bytes:
    return json.dumps(fhir_bundle("PLACEHOLDER")).replace("PLACEHOLDER", "\\ud800").encode()


@pytest.mark.parametrize(("path", "ctype"), ROUTES)
async def test_json_nested_100000_deep_is_malformed(rig: Rig, path: str, ctype: Any) -> None:
    r = await rig.http.post(path, content=DEEP, headers={**DEMO, **ctype})
    assert r.status_code == 400
    assert first_error(r) == "body|json_too_deep"


@pytest.mark.parametrize(("path", "ctype"), ROUTES)
async def test_a_5000_digit_integer_is_an_invalid_value(rig: Rig, path: str, ctype: Any) -> None:
    r = await rig.http.post(path, content=HUGE_INT, headers={**DEMO, **ctype})
    assert r.status_code == 422
    assert first_error(r) == "external_id|number_too_large"


async def test_a_lone_surrogate_in_external_id_is_an_invalid_value(rig: Rig) -> None:
    native = await rig.http.post("/v1/cases", content=surrogate_case(), headers={**DEMO, **JSON})
    assert native.status_code == 422
    assert first_error(native) == "external_id|string_unicode"
    for path in ("/v1/cases", "/v1/fhir/ServiceRequest"):
        r = await rig.http.post(path, content=surrogate_bundle(), headers={**DEMO, **FHIR_JSON})
        assert r.status_code == 422, r.text
        assert first_error(r) == "entry.0.resource.identifier.0.value|string_unicode"
    # Recorded, storable, and without the unreadable id.
    kept = [
        d for d in rig.store.rejections_seen.values() if d["errors"][0]["type"] == "string_unicode"
    ]
    assert len(kept) == 3 and all(d["external_id"] == "" for d in kept)
    # Dated by the service's clock, not the machine's.
    assert {d["at"] for d in kept} == {rig.clock.now().isoformat().replace("+00:00", "Z")}


async def test_refusals_never_quote_the_value(rig: Rig) -> None:
    case = json.dumps(native_case(MRN, ssn=float("inf"))).replace("Infinity", "1e999")
    r = await rig.http.post("/v1/cases", content=case.encode(), headers={**DEMO, **JSON})
    assert r.status_code == 422 and first_error(r) == "ssn|finite_number"
    nan = await rig.http.post("/v1/cases", content=b'{"a": NaN}', headers={**DEMO, **JSON})
    assert nan.status_code == 400 and first_error(nan) == "body|json_invalid"
    assert "Ann Example" not in r.text + str(rig.store.rejections_seen)


@pytest.mark.parametrize("path", ["/v1/cases/case-x/authorizations", "/v1/cases/case-x/review"])
async def test_bad_json_without_a_key_is_401_not_422(rig: Rig, path: str) -> None:
    r = await rig.http.post(path, content=b'{"provider_id": ', headers=JSON)
    assert r.status_code == 401, r.text
    deep = await rig.http.post(path, content=DEEP, headers={**DEMO, **JSON})
    assert deep.status_code in (400, 403) and deep.status_code != 500


def big_bundle(entries: int) -> dict[str, Any]:
    bundle = fhir_bundle("sr-big")
    filler = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "PSA"},
        "valueQuantity": {"value": 6.4, "unit": "ng/mL"},
    }
    extra = [
        {"fullUrl": f"urn:uuid:obs-{i}", "resource": {**filler, "id": f"obs-{i}"}}
        for i in range(entries - len(bundle["entry"]))
    ]
    bundle["entry"] = bundle["entry"] + extra
    return bundle


async def test_a_10000_entry_bundle_is_refused_with_the_limit(rig: Rig) -> None:
    body = json.dumps(big_bundle(10_000)).encode()
    for path in ("/v1/cases", "/v1/fhir/ServiceRequest"):
        r = await rig.http.post(path, content=body, headers={**DEMO, **FHIR_JSON})
        assert r.status_code == 422
        assert first_error(r) == "Bundle.entry|too_long"
        assert str(fhir.MAX_RESOURCES) in r.json()["issue"][0]["details"]["text"]


@pytest.fixture
def gated_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """fhir.parse, but it says when it started and waits to be let go (at most 10 s):
    the test then knows a Bundle is being parsed while it asks /healthz."""
    started, release = threading.Event(), threading.Event()
    real = fhir.parse

    def parse(payload: Any) -> Any:
        started.set()
        release.wait(timeout=10)
        return real(payload)

    monkeypatch.setattr(fhir, "parse", parse)
    yield started, release
    release.set()


async def test_healthz_is_answered_while_a_large_bundle_is_parsed(
    rig: Rig, gated_parse: tuple[threading.Event, threading.Event]
) -> None:
    started, release = gated_parse
    # Within the limit, and no ServiceRequest: parsed in full, then refused (422).
    bundle = big_bundle(fhir.MAX_RESOURCES)
    bundle["entry"] = bundle["entry"][1:]
    body = json.dumps(bundle).encode()
    finished: list[str] = []

    async def submit() -> httpx.Response:
        r = await rig.http.post(
            "/v1/fhir/ServiceRequest", content=body, headers={**DEMO, **FHIR_JSON}
        )
        finished.append("submit")
        return r

    submission = asyncio.create_task(submit())
    assert await asyncio.to_thread(started.wait, 10), "the bundle was never parsed"
    health = await rig.http.get("/healthz")
    finished.append("healthz")
    release.set()
    refused = await submission
    # Parsed on the event loop, the parse would have held the loop until released
    # (or its 10 s wait ran out) and /healthz would come second.
    assert finished == ["healthz", "submit"]
    assert health.status_code == 200
    assert refused.status_code == 422 and first_error(refused) == "Bundle.entry|fhir_mapping"


# ---------------------------------------------------------------- case.submitted


class RecordingBroker:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def publish(self, body: bytes, **kwargs: Any) -> None:
        self.published.append({"body": body, **kwargs})


def kafka_record(body: bytes, key: bytes) -> Any:
    headers = ce_headers(
        event_id="evt-hostile-1",
        ce_type=CaseSubmittedEnvelope.ce_type(),
        source="/test/integrator",
        tenant_id="demo-health",
    )
    raw = SimpleNamespace(topic="case.submitted", partition=0, offset=7, key=key, value=body)
    return SimpleNamespace(headers=dict(headers), body=body, raw_message=raw)


@pytest.mark.parametrize(
    "submission",
    [b"[" * 100_000 + b"]" * 100_000, b'{"external_id": ' + b"9" * 5_000 + b"}", surrogate_case()],
    ids=["deep", "huge-int", "lone-surrogate"],
)
async def test_hostile_case_submitted_is_dead_lettered_once_not_retried(
    rig: Rig, submission: bytes
) -> None:
    body = b'{"tenant_id": "demo-health", "submission": ' + submission + b"}"
    broker = RecordingBroker()
    consumer = EventConsumer(broker, rig.service.settings)  # type: ignore[arg-type]
    calls: list[Any] = []

    async def handler(event: Any, meta: Any) -> None:
        calls.append(event)

    await consumer._process(CaseSubmittedEnvelope, handler, kafka_record(body, b"opaque-key"))
    assert calls == []
    [dead] = broker.published
    assert dead["topic"] == "case.submitted.dlq"
    assert dead["headers"]["dlq_reason"].startswith("schema validation failed")


async def test_an_envelope_the_consumer_accepts_but_intake_cannot_carry_is_rejected(
    rig: Rig,
) -> None:
    """The shared consumer's parser allows 200 levels and ~4,300 digits; intake's
    limits apply on Kafka too, as a case.rejected with the field."""
    deep: Any = "x"
    for _ in range(100):
        deep = [deep]
    for i, (submission, expected) in enumerate(
        [
            (native_case(MRN, question=deep), "submission|json_too_deep"),
            (
                {**native_case(MRN), "external_id": 10**60},
                "submission.external_id|number_too_large",
            ),
        ]
    ):
        outbox = await handlers.submit_from_kafka(
            rig.store, rig.clock, f"evt-limit-{i}", "demo-health", submission, None
        )
        [entry] = outbox
        assert entry.topic == "case.rejected"
        error = entry.body["errors"][0]
        assert f"{error['loc']}|{error['type']}" == expected


# ---------------------------------------------------------------- spans


def test_the_integrator_key_of_case_submitted_is_not_in_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(IntegratorKeyRedaction())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    key = SpanAttributes.MESSAGING_KAFKA_MESSAGE_KEY
    for topic_attr, topic in [
        ("messaging.destination_publish.name", "case.submitted"),  # consume span
        (SpanAttributes.MESSAGING_DESTINATION_NAME, "case.submitted.dlq"),  # dead-letter publish
        (SpanAttributes.MESSAGING_DESTINATION_NAME, "case.accepted"),  # keyed by case id
    ]:
        tracer.start_span(topic, attributes={topic_attr: topic, key: MRN.encode()}).end()
    keys = {s.name: (s.attributes or {})[key] for s in exporter.get_finished_spans()}
    assert keys == {
        "case.submitted": REDACTED,
        "case.submitted.dlq": REDACTED,
        "case.accepted": MRN.encode(),
    }


async def test_intake_spans_carry_no_external_id(rig: Rig) -> None:
    """The redaction is installed on the service's own provider, and an HTTP
    submission's spans (route, path, status) do not name the external id."""
    case = native_case(MRN, question="short")
    r = await rig.http.post("/v1/cases", json=case, headers=DEMO)
    assert r.status_code == 422
    tracer = rig.service.tracer_provider.get_tracer("test")
    key = SpanAttributes.MESSAGING_KAFKA_MESSAGE_KEY
    tracer.start_span(
        "case.submitted process",
        attributes={"messaging.destination_publish.name": "case.submitted", key: MRN},
    ).end()
    rig.service.tracer_provider.force_flush()
    spans = [json.loads(line) for line in rig.traces.read_text().splitlines()]
    assert any(s["name"] == "case.submitted process" for s in spans)
    assert any(s["attributes"].get("http.route") == "/v1/cases" for s in spans)
    assert MRN not in rig.traces.read_text()

"""Every read and change through an API is audited (security review, finding 7):
on the real database, intake's calls leave FHIR AuditEvent records (IHE BALP
shape, valid for `fhir.resources` R4B strictly) naming the caller, the action,
the case and the outcome; operations query them; and a call whose audit record
cannot be written is refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fhir.resources.R4B.auditevent import AuditEvent
from pymongo import AsyncMongoClient

from services.intake.app import create_service
from services.intake.settings import IntakeSettings
from shared.clock import ManualClock
from shared.runtime import Service
from shared.store import connect
from tests.unit.test_intake_fhir import native_case

INTEGRATOR = {"Authorization": "Bearer demo-int.dev-secret-demo-int"}
OTHER_TENANT = {"Authorization": "Bearer other-int.dev-secret-other-int"}
OPERATIONS = {"Authorization": "Bearer ops.dev-secret-ops"}


@pytest_asyncio.fixture(loop_scope="session")
async def intake(
    infra: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    database = f"audit_it_{uuid.uuid4().hex[:8]}"
    settings = IntakeSettings(
        kafka_bootstrap=infra["kafka_bootstrap"],
        mongo_uri=infra["mongo_uri"],
        mongo_database=database,
        trace_dir=tmp_path,
    )
    service = create_service(settings, ManualClock())
    await service.audit.create_indexes()
    transport = httpx.ASGITransport(app=service.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
        yield service, http
    client, _ = connect(infra["mongo_uri"], database)
    await client.drop_database(database)
    await client.close()


async def _records(service: Service) -> list[dict[str, Any]]:
    return await service.audit.collection.find({}).sort("recorded_at", 1).to_list()


async def test_reads_and_changes_leave_valid_audit_events_with_caller_case_and_outcome(
    intake: tuple[Service, httpx.AsyncClient],
) -> None:
    service, http = intake
    created = await http.post(
        "/v1/cases", json=native_case(f"aud-{uuid.uuid4().hex[:6]}"), headers=INTEGRATOR
    )
    assert created.status_code == 201, created.text
    case_id = created.json()["case_id"]
    assert (await http.get(f"/v1/cases/{case_id}", headers=INTEGRATOR)).status_code == 200
    assert (await http.get(f"/v1/cases/{case_id}", headers=OTHER_TENANT)).status_code == 404
    assert (await http.get("/v1/cases/case-unknown", headers=INTEGRATOR)).status_code == 404

    records = await _records(service)
    assert [r["route"] for r in records] == [
        "POST /v1/cases",
        "GET /v1/cases/{case_id}",
        "GET /v1/cases/{case_id}",
        "GET /v1/cases/{case_id}",
    ]
    for record in records:
        event = AuditEvent.model_validate(record["resource"])  # strict R4B validation
        assert event.type.code == "rest"
    submit, read, foreign, missing = (r["resource"] for r in records)
    assert submit["action"] == "C" and submit["outcome"] == "0"
    assert read["action"] == "R" and read["subtype"][0]["code"] == "read"
    assert read["agent"][0]["who"]["identifier"]["value"] == "demo-int"
    assert read["agent"][0]["requestor"] is True
    assert {"system": "urn:secondopinion:case_id", "value": case_id} in [
        e["what"]["identifier"] for e in read["entity"] if "what" in e
    ]
    assert foreign["agent"][0]["who"]["identifier"]["value"] == "other-int"
    assert foreign["outcome"] == "4" and missing["outcome"] == "4"
    # No PHI in the trail: the patient's name from the submission appears nowhere.
    assert native_case()["patient"]["name"] not in str(records)


async def test_operations_query_the_trail_by_case(
    intake: tuple[Service, httpx.AsyncClient],
) -> None:
    _, http = intake
    created = await http.post(
        "/v1/cases", json=native_case(f"aud-{uuid.uuid4().hex[:6]}"), headers=INTEGRATOR
    )
    case_id = created.json()["case_id"]
    await http.get(f"/v1/cases/{case_id}", headers=INTEGRATOR)
    found = await http.get("/v1/audit", params={"case_id": case_id}, headers=OPERATIONS)
    assert found.status_code == 200
    bundle = found.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert [e["resource"]["action"] for e in bundle["entry"]] == ["R"]
    assert (await http.get("/v1/audit", headers=INTEGRATOR)).status_code == 403


async def test_a_call_whose_audit_record_cannot_be_written_is_refused(
    intake: tuple[Service, httpx.AsyncClient],
) -> None:
    service, http = intake
    created = await http.post(
        "/v1/cases", json=native_case(f"aud-{uuid.uuid4().hex[:6]}"), headers=INTEGRATOR
    )
    case_id = created.json()["case_id"]
    unreachable: AsyncMongoClient[Any] = AsyncMongoClient(
        "mongodb://127.0.0.1:9/?directConnection=true", serverSelectionTimeoutMS=300
    )
    kept = service.audit.collection
    service.audit.collection = unreachable["audit"]["audit_events"]
    try:
        refused = await http.get(f"/v1/cases/{case_id}", headers=INTEGRATOR)
    finally:
        service.audit.collection = kept
        await unreachable.close()
    assert refused.status_code == 503
    assert case_id not in refused.text and "stage" not in refused.json()


@pytest.mark.parametrize("days", [1, 2190])
async def test_retention_is_a_ttl_on_the_record_time(
    intake: tuple[Service, httpx.AsyncClient], days: int
) -> None:
    service, _ = intake
    service.audit.retention = timedelta(days=days)
    await service.audit.collection.drop_indexes()
    await service.audit.create_indexes()
    indexes = await service.audit.collection.index_information()
    ttl = [i for i in indexes.values() if "expireAfterSeconds" in i]
    assert ttl == [{**ttl[0], "key": [("recorded_at", 1)], "expireAfterSeconds": days * 86400}]

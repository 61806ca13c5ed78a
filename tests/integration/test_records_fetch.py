"""records_fetch against the real PACS (Orthanc, DICOMweb) and FHIR peer."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from deploy.local import seed
from services.records_fetch import handlers
from services.records_fetch.domain import ProviderEndpoints, ProviderRegistry
from shared.envelope import EventMeta
from shared.errors import ProviderUnavailable
from shared.events import CaseAccepted, RecordsComplete
from shared.store import Doc


def accepted(imaging_pid: str, clinic_pid: str, provider: str = "pacs") -> CaseAccepted:
    return CaseAccepted.model_validate(
        {
            "case_id": f"case-{uuid.uuid4().hex[:8]}",
            "tenant_id": "t1",
            "external_id": "x",
            "routing": {"subspecialties": ["neuroradiology"], "jurisdiction": "US-CA"},
            "records": [
                {
                    "provider_id": provider,
                    "patient_id": imaging_pid,
                    "kinds": ["imaging"],
                    "authorized": True,
                },
                {
                    "provider_id": "clinic",
                    "patient_id": clinic_pid,
                    "kinds": ["notes", "labs", "treatments"],
                    "authorized": True,
                },
            ],
        }
    )


def registry(infra: dict[str, Any], dicomweb: str | None = None) -> ProviderRegistry:
    ep = ProviderEndpoints(
        dicomweb_url=dicomweb or infra["dicomweb_url"], fhir_url=infra["fhir_url"]
    )
    return ProviderRegistry(tenants={"t1": {"pacs": ep, "clinic": ep}})


def meta() -> EventMeta:
    return EventMeta(event_id=str(uuid.uuid4()), ce_type="", source="", time="", tenant_id="t1")


async def test_manifest_counts_real_studies_and_chart(
    infra: dict[str, Any], db: AsyncDatabase[Doc]
) -> None:
    pid = f"MRN-{uuid.uuid4().hex[:8]}"
    seed.seed_pacs(
        infra["orthanc_url"],
        pid,
        "Test^Pat",
        [("MR_small.dcm", "20261001"), ("CT_small.dcm", "20240101")],
    )
    clinic_pid = seed.seed_fhir(infra["fhir_url"], "Test", "Pat", "1970-01-01")
    event = accepted(pid, clinic_pid)
    async with httpx.AsyncClient(timeout=10) as client:
        outbox = await handlers.fetch_records(db["fetches"], client, registry(infra), event, meta())
    complete = RecordsComplete.model_validate(outbox[-1].body)
    by_kind = {m.kind.value: m for m in complete.manifest}
    assert by_kind["imaging"].count == 2 and "2 studies" in by_kind["imaging"].detail
    assert by_kind["notes"].count == 1
    assert by_kind["labs"].count == 2
    assert by_kind["treatments"].count == 2  # a MedicationStatement and a Procedure
    assert [e.topic for e in outbox] == [
        "records.requested",
        "records.requested",
        "records.complete",
    ]


async def test_unregistered_provider_is_reported_missing_not_called(
    infra: dict[str, Any], db: AsyncDatabase[Doc]
) -> None:
    event = accepted("MRN-none", "none", provider="not-registered")
    async with httpx.AsyncClient(timeout=10) as client:
        outbox = await handlers.fetch_records(db["fetches"], client, registry(infra), event, meta())
    imaging = RecordsComplete.model_validate(outbox[-1].body).manifest[0]
    assert imaging.kind.value == "imaging" and not imaging.present
    assert "not registered" in imaging.detail


async def test_pacs_down_is_retryable(infra: dict[str, Any], db: AsyncDatabase[Doc]) -> None:
    from deploy.local.stack import free_port

    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    async with httpx.AsyncClient(timeout=3) as client:
        with pytest.raises(ProviderUnavailable):
            await handlers.fetch_records(
                db["fetches"], client, registry(infra, down), accepted("M", "c"), meta()
            )
    assert await db["fetches"].count_documents({}) == 0  # nothing half-written

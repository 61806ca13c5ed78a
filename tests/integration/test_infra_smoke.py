"""Smoke test of the embedded local stack (deploy/local/infra.py).

It uses the stack running in LOCAL_STATE_DIR (default <repo>/.run/infra, as
started by `.venv/bin/python deploy/local/infra.py start`), read from its
endpoints.json. When no stack runs there, it falls back to the private stack
of the shared `infra` fixture (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("LOCAL_STATE_DIR", REPO / ".run" / "infra"))
RUN_ID = uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def endpoints(request: pytest.FixtureRequest) -> dict[str, Any]:
    # endpoints.json outlives `stop`, so only trust it while PID files exist.
    if any((STATE_DIR / "pids").glob("*.pid")):
        return json.loads((STATE_DIR / "endpoints.json").read_text())
    return request.getfixturevalue("infra")


def http_client(base_url: str) -> httpx.AsyncClient:
    # trust_env=False: loopback traffic must not go through a configured proxy.
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=10)


async def test_kafka_produce_then_group_consume(endpoints: dict[str, Any]) -> None:
    topic = f"infra-smoke-{RUN_ID}"  # Tansu auto-creates it on first produce
    producer = AIOKafkaProducer(
        bootstrap_servers=endpoints["kafka_bootstrap"],
        enable_idempotence=False,  # Tansu rejects aiokafka's InitProducerId
        acks="all",
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=endpoints["kafka_bootstrap"],
        group_id=f"infra-smoke-{RUN_ID}",
        auto_offset_reset="earliest",  # Tansu's "latest" offset is unreliable
        session_timeout_ms=6000,  # the join waits about half of this
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"k1", b"hello")


async def test_mongo_upsert_and_unique_index(endpoints: dict[str, Any]) -> None:
    client: AsyncMongoClient[dict] = AsyncMongoClient(
        endpoints["mongo_uri"], serverSelectionTimeoutMS=5000
    )
    collection = client["infra_smoke"][f"cases_{RUN_ID}"]
    try:
        await collection.create_index("case_id", unique=True)
        doc = await collection.find_one_and_update(
            {"case_id": "C-1"}, {"$set": {"status": "new"}}, upsert=True, return_document=True
        )
        assert doc is not None and doc["status"] == "new"
        with pytest.raises(DuplicateKeyError):
            await collection.insert_one({"case_id": "C-1", "status": "duplicate"})
    finally:
        await collection.drop()
        await client.close()


async def test_orthanc_upload_then_qido(endpoints: dict[str, Any]) -> None:
    # A copy of pydicom's bundled CT with fresh identifiers, so every run
    # stores (and finds) its own study.
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    patient_id = f"SMOKE-{RUN_ID}"
    dataset.PatientID = patient_id
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer)

    async with http_client(endpoints["orthanc_url"]) as orthanc:
        upload = await orthanc.post(
            "/instances", content=buffer.getvalue(), headers={"content-type": "application/dicom"}
        )
        assert upload.status_code == 200, upload.text
        try:
            qido = await orthanc.get(
                "/dicom-web/studies",
                params={"PatientID": patient_id},
                headers={"accept": "application/dicom+json"},
            )
            assert qido.status_code == 200, qido.text
            studies = qido.json()
            assert [s["0020000D"]["Value"][0] for s in studies] == [dataset.StudyInstanceUID]
        finally:
            await orthanc.delete(f"/studies/{upload.json()['ParentStudy']}")


async def test_fhir_create_and_search_patient(endpoints: dict[str, Any]) -> None:
    identifier = {"system": "urn:example:mrn", "value": f"MRN-{RUN_ID}"}
    async with http_client(endpoints["fhir_url"]) as fhir:
        created = await fhir.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "identifier": [identifier],
                "name": [{"family": "Smoke"}],
            },
            headers={"content-type": "application/fhir+json"},
        )
        assert created.status_code == 201, created.text
        found = await fhir.get(
            "/Patient", params={"identifier": f"{identifier['system']}|{identifier['value']}"}
        )
        assert found.status_code == 200, found.text
        entries = found.json().get("entry", [])
        assert [e["resource"]["id"] for e in entries] == [created.json()["id"]]


def test_the_s3_store_runs_under_its_soft_memory_limit(
    infra: dict[str, Any], stack_root: Path
) -> None:
    """weed, as infra started it, has Go's soft heap limit (docs/performance.md: its
    RSS levels off near 390 MiB under the soak instead of climbing past 600)."""
    limit = os.environ.get("LOCAL_S3_MEMORY_LIMIT", "448MiB")
    if limit == "off":
        pytest.skip("LOCAL_S3_MEMORY_LIMIT=off: weed runs on Go's default pacing")
    pid = int((stack_root / "infra" / "pids" / "s3.pid").read_text().split()[0])
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"weed" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert f"GOMEMLIMIT={limit}".encode() in environ

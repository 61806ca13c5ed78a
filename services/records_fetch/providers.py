"""Adapters to the providers' systems: QIDO-RS on the PACS, search on the FHIR
endpoint. Only URLs from the registry are called; failures of the peer are
`ProviderUnavailable` (retried), never a lost case."""

from __future__ import annotations

from typing import Any

import httpx

from services.records_fetch.domain import FHIR_TYPES, ProviderEndpoints
from shared.errors import ProviderUnavailable
from shared.events import RecordKind

DICOM_JSON = "application/dicom+json"


async def _get_json(
    client: httpx.AsyncClient, url: str, params: dict[str, str], accept: str
) -> Any:
    try:
        resp = await client.get(url, params=params, headers={"Accept": accept})
    except httpx.TransportError as exc:
        raise ProviderUnavailable(f"provider unreachable: {type(exc).__name__}") from None
    if resp.status_code >= 500 or resp.status_code == 429:
        raise ProviderUnavailable(f"provider answered {resp.status_code}")
    if resp.status_code == 204 or not resp.content:
        return []
    resp.raise_for_status()
    return resp.json()


async def count_study_instances(
    client: httpx.AsyncClient, endpoints: ProviderEndpoints, patient_id: str
) -> tuple[int, int]:
    """(studies, instances) the PACS holds for the patient, from QIDO-RS."""
    if endpoints.dicomweb_url is None:
        return 0, 0
    base = str(endpoints.dicomweb_url).rstrip("/")
    studies = await _get_json(
        client,
        f"{base}/studies",
        {"PatientID": patient_id, "includefield": "00201208"},
        DICOM_JSON,
    )
    instances = sum(int((s.get("00201208", {}).get("Value") or [0])[0]) for s in studies)
    return len(studies), instances


async def count_fhir(
    client: httpx.AsyncClient, endpoints: ProviderEndpoints, patient_id: str, kind: RecordKind
) -> int:
    """How many resources of `kind` the FHIR endpoint holds for the patient."""
    if endpoints.fhir_url is None:
        return 0
    base = str(endpoints.fhir_url).rstrip("/")
    total = 0
    for rtype in FHIR_TYPES.get(kind, ()):
        bundle = await _get_json(
            client, f"{base}/{rtype}", {"subject": f"Patient/{patient_id}"}, "application/fhir+json"
        )
        total += len(bundle.get("entry", []) or [])
    return total

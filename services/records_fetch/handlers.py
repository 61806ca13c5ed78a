"""records_fetch's handlers: an accepted case → ask each registered provider for
the records → the manifest stored with records.requested / records.complete in
the outbox."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from services.records_fetch import domain, providers
from shared.envelope import EventMeta, OutboxEntry, outbox_entry
from shared.errors import UnregisteredEndpoint
from shared.events import (
    CaseAccepted,
    ManifestItem,
    ProviderRecords,
    RecordKind,
    RecordsComplete,
    RecordsRequested,
)
from shared.store import Doc, apply_once
from shared.telemetry import current_traceparent


async def _provider_manifest(
    client: httpx.AsyncClient,
    registry: domain.ProviderRegistry,
    tenant_id: str,
    rec: ProviderRecords,
) -> list[ManifestItem]:
    try:
        endpoints = registry.lookup(tenant_id, rec.provider_id)
    except UnregisteredEndpoint as exc:
        return [domain.manifest_item(kind, 0, exc.detail) for kind in rec.kinds]
    items = []
    for kind in rec.kinds:
        if kind is RecordKind.IMAGING:
            studies, instances = await providers.count_study_instances(
                client, endpoints, rec.patient_id
            )
            items.append(
                domain.manifest_item(kind, instances, f"{studies} studies at {rec.provider_id}")
            )
        elif kind is RecordKind.PATHOLOGY:
            items.append(
                domain.manifest_item(kind, 0, f"glass slides requested from {rec.provider_id}")
            )
        else:
            count = await providers.count_fhir(client, endpoints, rec.patient_id, kind)
            items.append(domain.manifest_item(kind, count, f"from {rec.provider_id}"))
    return items


async def fetch_records(
    fetches,
    client: httpx.AsyncClient,
    registry: domain.ProviderRegistry,
    event: CaseAccepted,
    meta: EventMeta,
) -> list[OutboxEntry]:
    """Query every listed provider, store the manifest, emit requested + complete."""
    items: list[ManifestItem] = []
    for rec in event.records:
        items += await _provider_manifest(client, registry, event.tenant_id, rec)
    manifest = domain.merge_manifest(items)
    tp = current_traceparent()
    base = {"case_id": event.case_id, "tenant_id": event.tenant_id}
    outbox = [
        outbox_entry(
            RecordsRequested(**base, provider_id=r.provider_id, kinds=r.kinds), traceparent=tp
        )
        for r in event.records
    ]
    outbox.append(
        outbox_entry(
            RecordsComplete(
                **base, routing=event.routing, manifest=manifest, completed_at=datetime.now(UTC)
            ),
            traceparent=tp,
        )
    )
    update: Doc = {
        "$set": {
            "tenant_id": event.tenant_id,
            "providers": [r.provider_id for r in event.records],
            "manifest": [m.model_dump(mode="json") for m in manifest],
            "state": "complete",
            "updated_at": datetime.now(UTC),
        }
    }
    applied = await apply_once(fetches, event.case_id, meta.event_id, update, outbox)
    return outbox if applied else []

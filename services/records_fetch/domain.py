"""records_fetch's domain, free of I/O: the provider registry (the only
endpoints we may call) and the completeness manifest."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, HttpUrl

from shared.errors import UnregisteredEndpoint
from shared.events import ManifestItem, RecordKind


class ProviderEndpoints(BaseModel):
    """A provider registered for a tenant: its PACS (DICOMweb) and FHIR base URLs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dicomweb_url: HttpUrl | None = None
    fhir_url: HttpUrl | None = None


class ProviderRegistry(BaseModel):
    """tenant_id → provider_id → endpoints."""

    tenants: dict[str, dict[str, ProviderEndpoints]] = {}

    def lookup(self, tenant_id: str, provider_id: str) -> ProviderEndpoints:
        try:
            return self.tenants[tenant_id][provider_id]
        except KeyError:
            raise UnregisteredEndpoint(
                f"provider {provider_id!r} is not registered for tenant {tenant_id!r}"
            ) from None


# FHIR resource types that hold each kind of clinical record.
FHIR_TYPES: dict[RecordKind, tuple[str, ...]] = {
    RecordKind.NOTES: ("DocumentReference",),
    RecordKind.REPORTS: ("DiagnosticReport",),
    RecordKind.LABS: ("Observation",),
    RecordKind.TREATMENTS: ("MedicationStatement", "Procedure"),
}


def manifest_item(kind: RecordKind, count: int, detail: str = "") -> ManifestItem:
    return ManifestItem(kind=kind, present=count > 0, count=count, detail=detail)


def merge_manifest(items: list[ManifestItem]) -> list[ManifestItem]:
    """One line per kind across providers: present if any provider had it."""
    by_kind: dict[RecordKind, ManifestItem] = {}
    for item in items:
        prev = by_kind.get(item.kind)
        if prev is None:
            by_kind[item.kind] = item
            continue
        detail = "; ".join(d for d in (prev.detail, item.detail) if d)
        by_kind[item.kind] = manifest_item(item.kind, prev.count + item.count, detail)
    return [by_kind[k] for k in sorted(by_kind, key=list(RecordKind).index)]

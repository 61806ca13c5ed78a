"""records_fetch's wiring: the `case.accepted` subscriber and its HTTP client."""

from __future__ import annotations

import json

import httpx

from services.records_fetch import handlers
from services.records_fetch.domain import ProviderRegistry
from services.records_fetch.settings import RecordsFetchSettings
from shared.envelope import EventMeta
from shared.events import CaseAccepted
from shared.runtime import Service

settings = RecordsFetchSettings()
service = Service(
    settings,
    title="Second-opinion records fetch",
    description="Collects imaging (DICOMweb) and clinical records (FHIR R4) for accepted cases.",
)
fetches = service.collection("fetches", outbox=True)
api = service.api
app = service.asyncapi


def load_registry() -> ProviderRegistry:
    if not settings.providers_file.exists():
        return ProviderRegistry()
    return ProviderRegistry(tenants=json.loads(settings.providers_file.read_text()))


registry = load_registry()
# One client for the process: connection reuse; redirects off so a provider
# cannot bounce us to an unregistered host.
client = httpx.AsyncClient(timeout=settings.provider_timeout_seconds, follow_redirects=False)


@service.consumer.on(CaseAccepted)
async def on_case_accepted(event: CaseAccepted, meta: EventMeta) -> None:
    service.emitted(await handlers.fetch_records(fetches, client, registry, event, meta))

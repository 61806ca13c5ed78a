"""The provider registry: per tenant, the providers whose records the router may
fetch (their PACS and FHIR base URLs, the only endpoints records_fetch calls).

One file, read by two services: records_fetch calls the endpoints; intake refuses
a case naming a provider that is not registered for its tenant (422 on the field,
`case.rejected` on Kafka) instead of accepting a case records_fetch could never
retrieve. The file is JSON, `{tenant_id: {provider_id: {dicomweb_url, fhir_url}}}`
(deploy/local/stack.py writes the local one; in Kubernetes it is the
`providers.json` of the router's ConfigMap). Each service reads it at start-up:
registering a provider is an edit of the file and a restart of both
(docs/intake.md, "A provider registered later").
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, HttpUrl

from shared.errors import UnregisteredEndpoint


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

    def is_registered(self, tenant_id: str, provider_id: str) -> bool:
        return provider_id in self.tenants.get(tenant_id, {})


def load_registry(path: Path | None) -> ProviderRegistry:
    """The registry in `path`; an empty one if there is no such file."""
    if path is None or not path.exists():
        return ProviderRegistry()
    return ProviderRegistry(tenants=json.loads(path.read_text()))

"""Every endpoint of every service's OpenAPI refuses missing and invalid
credentials (401), except the deliberately public ones listed below."""

from __future__ import annotations

import re

import httpx
import pytest

from deploy.local.stack import SERVICES
from tests.conftest import RunningStack
from tests.security.conftest import auth

pytestmark = pytest.mark.security

# path -> why it is public (same on every service unless the service is named)
PUBLIC = {
    "/healthz": "liveness probe, says only 'ok'",
    "/readyz": "readiness probe, says only whether broker and database answer",
    "/metrics": "Prometheus scrape; labels carry no PHI (test_zz_phi_scan checks)",
    "/docs": "Swagger UI page, no data",
    "/docs/oauth2-redirect": "Swagger UI helper page, no data",
    "/redoc": "ReDoc page, no data",
    "/openapi.json": "the published API description",
    "reporting /v1/keys": "the reviewers' PUBLIC verification keys (a JWK set) partners need",
    "reporting /.well-known/jwks.json": "the same public JWK set at its well-known address",
    "reporting /fhir/CodeSystem/concordance": (
        "the CodeSystem of the report's conclusion codes, a terminology resource any "
        "reader of a filed DiagnosticReport must be able to resolve (no PHI)"
    ),
    "reporting /v1/verify": "checks a document the caller already holds against the public "
    "keys; reads no stored data",
    "assignment /dashboard": "a static page; its script asks /v1/dashboard with the operator's "
    "key (not in the OpenAPI: include_in_schema=False)",
}
BAD_CREDENTIALS = {
    "missing": {},
    "unknown key": {"Authorization": "Bearer nobody.dev-secret-nobody"},
    "wrong secret": {"Authorization": "Bearer demo-int.not-the-secret"},
    "key id only": {"Authorization": "Bearer demo-int"},
    "other scheme": {"Authorization": "Basic ZGVtby1pbnQ6eA=="},
    "empty bearer": {"Authorization": "Bearer"},
    "hash as key": {
        "Authorization": "Bearer 395fe2bece95b279fc0b5809e7f568cb33782bac2df85b2c399e5249e72ba2e2"
    },
}


def is_public(service: str, path: str) -> bool:
    return path in PUBLIC or f"{service} {path}" in PUBLIC


def operations(client: httpx.Client, base: str) -> list[tuple[str, str]]:
    spec = client.get(f"{base}/openapi.json").raise_for_status().json()
    return [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_every_non_public_endpoint_refuses_missing_and_invalid_credentials(
    running_stack: RunningStack,
) -> None:
    checked, failures = 0, []
    with httpx.Client(timeout=10) as client:
        for service in SERVICES:
            base = running_stack.urls[service]
            ops = operations(client, base)
            assert ops, service
            for method, path in ops:
                if is_public(service, path):
                    continue
                url = base + re.sub(r"\{[^}]+\}", "x-1", path)
                for label, headers in BAD_CREDENTIALS.items():
                    resp = client.request(method, url, headers=headers, json={})
                    checked += 1
                    if resp.status_code != 401:
                        failures.append(
                            f"{service} {method} {path} [{label}] -> {resp.status_code}"
                        )
    assert not failures, "\n".join(failures)
    assert checked > 100


def test_the_public_endpoints_are_reachable_without_credentials(
    running_stack: RunningStack,
) -> None:
    with httpx.Client(timeout=10) as client:
        for service in SERVICES:
            base = running_stack.urls[service]
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
                assert client.get(base + path).status_code == 200, (service, path)
        assert client.get(running_stack.urls["reporting"] + "/v1/keys").status_code == 200
        page = client.get(running_stack.urls["assignment"] + "/dashboard")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        # The page is a shell: its data comes from the authenticated JSON endpoint.
        assert client.get(running_stack.urls["assignment"] + "/v1/dashboard").status_code == 401


def test_the_listed_public_paths_exist_so_the_list_stays_honest(
    running_stack: RunningStack,
) -> None:
    with httpx.Client(timeout=10) as client:
        paths = {
            f"{service} {path}"
            for service in SERVICES
            for _, path in operations(client, running_stack.urls[service])
        }
    for entry in PUBLIC:
        if " " in entry and not entry.endswith("/dashboard"):
            assert entry in paths, entry


@pytest.mark.parametrize(
    ("service", "method", "path", "key_id"),
    [
        ("intake", "GET", "/v1/cases", "demo-partner"),
        ("intake", "POST", "/v1/cases/x-1/review", "demo-int"),
        ("reporting", "GET", "/v1/reviewer/assignments", "demo-int"),
        ("notify", "GET", "/v1/subscriptions", "demo-int"),
        ("assignment", "GET", "/v1/reviewers", "rev-neuro-1"),
        ("assignment", "GET", "/v1/dashboard", "demo-partner"),
        ("records_fetch", "POST", "/v1/cases/x-1/override", "demo-int"),
    ],
)
def test_a_valid_key_of_the_wrong_role_is_forbidden(
    running_stack: RunningStack, service: str, method: str, path: str, key_id: str
) -> None:
    url = running_stack.urls[service] + path
    body = {"release": True, "reason": "because of reasons"}
    resp = httpx.request(method, url, headers=auth(key_id), json=body, timeout=10)
    assert resp.status_code == 403, resp.text

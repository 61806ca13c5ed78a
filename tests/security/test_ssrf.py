"""SSRF: a URL a tenant gives us (the notify webhook URL, on create and on
change) must not point into private, link-local or metadata networks. The
stack runs in development mode, where loopback is allowed (local receivers);
production refusals of loopback and plain http are shown on notify's own
check with production settings. Other outbound calls take no URL from a
message: records_fetch calls only the provider endpoints registered for the
tenant (see test_an_unregistered_provider_is_never_called)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.notify.channels import validate_url
from services.notify.settings import NotifySettings
from services.records_fetch.domain import ProviderRegistry, within_base
from shared.errors import PermanentError, UnregisteredEndpoint
from tests.conftest import RunningStack
from tests.security.conftest import Canary, auth

pytestmark = pytest.mark.security

PRIVATE = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://169.254.169.254/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.0.0.1/hook",
    "http://10.255.255.255:8080/",
    "http://172.16.0.1/",
    "http://192.168.0.1/",
    "http://192.168.1.254:443/admin",
    "http://100.64.0.1/",
    "http://0.0.0.0:8001/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[::]/",
    "http://0251.0376.0251.0376/",  # 169.254.169.254 in octal
    "http://0xa9fea9fe/",  # 169.254.169.254 as one hex number
    "http://2852039166/",  # 169.254.169.254 as one decimal number
    "http://224.0.0.1/",
]
MALFORMED = [
    "file:///etc/passwd",
    "gopher://127.0.0.1:25/_HELO",
    "ftp://example.com/",
    "dict://127.0.0.1:11211/",
    "http://user:pass@example.com/",
    "//169.254.169.254/",
    "169.254.169.254",
    "http:///nohost",
    "http://[::1",
    "http://metadata.invalid/",
]
LOOPBACK = ["http://127.0.0.1:9/hook", "http://[::1]:9/hook", "http://localhost:9/hook"]


@pytest.mark.parametrize("url", PRIVATE + MALFORMED)
def test_webhook_to_a_private_or_odd_address_is_refused(
    running_stack: RunningStack, url: str
) -> None:
    notify = running_stack.urls["notify"]
    resp = httpx.post(
        f"{notify}/v1/subscriptions", json={"url": url}, headers=auth("demo-partner"), timeout=15
    )
    assert resp.status_code in (400, 422), (url, resp.status_code, resp.text)
    listed = httpx.get(f"{notify}/v1/subscriptions", headers=auth("demo-partner")).json()
    assert url not in {s["url"] for s in listed}


def test_changing_a_webhook_url_to_a_private_address_is_refused(
    running_stack: RunningStack, canary: Canary
) -> None:
    notify = running_stack.urls["notify"]
    sub = canary.subscription_id
    for url in PRIVATE[:6]:
        resp = httpx.patch(
            f"{notify}/v1/subscriptions/{sub}", json={"url": url}, headers=auth("demo-partner")
        )
        assert resp.status_code in (400, 422), (url, resp.status_code)
    now = httpx.get(f"{notify}/v1/subscriptions/{sub}", headers=auth("demo-partner")).json()
    assert now["url"] == canary.receiver.url


def test_loopback_is_allowed_in_development_mode(running_stack: RunningStack) -> None:
    notify = running_stack.urls["notify"]
    for url in LOOPBACK:
        resp = httpx.post(
            f"{notify}/v1/subscriptions",
            json={"url": url, "event_types": ["sla.breached"]},
            headers=auth("other-partner"),
        )
        assert resp.status_code == 201, (url, resp.text)
        sub = resp.json()["subscription_id"]
        httpx.delete(f"{notify}/v1/subscriptions/{sub}", headers=auth("other-partner"))


def production(url: str) -> None:
    settings = NotifySettings(dev_mode=False, allow_loopback_webhooks=True)
    asyncio.run(validate_url(url, settings))


@pytest.mark.parametrize("url", LOOPBACK + [u.replace("http://", "https://") for u in LOOPBACK])
def test_loopback_and_plain_http_are_refused_in_production(url: str) -> None:
    with pytest.raises(UnregisteredEndpoint):
        production(url)


@pytest.mark.parametrize("url", PRIVATE + MALFORMED)
def test_private_addresses_are_refused_in_production(url: str) -> None:
    with pytest.raises(PermanentError):
        production(url.replace("http://", "https://"))


def test_an_unregistered_provider_is_never_called() -> None:
    """records_fetch takes provider ids from messages, never URLs, and follows a
    provider's paging links only under the registered base URL."""
    fhir = "https://fhir.st-mary.example/r4"
    registry = ProviderRegistry.model_validate(
        {"tenants": {"demo-health": {"st-mary": {"fhir_url": fhir, "dicomweb_url": fhir}}}}
    )
    assert registry.lookup("demo-health", "st-mary")
    for tenant, provider in [
        ("other-clinic", "st-mary"),
        ("demo-health", "http://169.254.169.254/"),
        ("demo-health", "riverside"),
    ]:
        with pytest.raises(UnregisteredEndpoint):
            registry.lookup(tenant, provider)
    assert within_base(f"{fhir}/Observation?page=2", fhir)
    for link in ("http://169.254.169.254/r4/x", "https://fhir.st-mary.example/r4evil", fhir + "@x"):
        assert not within_base(link, fhir), link

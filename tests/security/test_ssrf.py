"""SSRF: a URL a tenant gives us (the notify webhook URL, on create and on
change) must not point into private, link-local or metadata networks. The
stack runs in development mode, where loopback is allowed (local receivers);
production refusals of loopback and plain http are shown on notify's own
check with production settings. Other outbound calls take no URL from a
message: records_fetch calls only the provider endpoints registered for the
tenant (see test_an_unregistered_provider_is_never_called)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from services.notify import transport
from services.notify.channels import WebhookChannel, validate_url
from services.notify.models import Delivery, Subscription
from services.notify.settings import NotifySettings
from services.records_fetch.domain import ProviderRegistry, within_base
from shared.clock import ManualClock
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
    # IPv6 forms embedding a private IPv4 (issue 15 finding 6)
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[64:ff9b::10.0.0.1]/",
    "http://[2002:a9fe:a9fe::]/",  # 6to4
    "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated
    "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64 local-use prefix
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
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
    "http://127.0.0.1:18990/x\r\nX: 1",  # finding 5: accepted, then never sendable
    "http://\u0661\u0662\u0667.\u0660.\u0660.\u0661/x",
    "http://partner.example:99999/",
    "http://partner.example/#frag",
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


PRODUCTION = NotifySettings(dev_mode=False, allow_loopback_webhooks=True)
DEVELOPMENT = NotifySettings(dev_mode=True, allow_loopback_webhooks=True)


def production(url: str) -> None:
    asyncio.run(validate_url(url, PRODUCTION))


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


# ---------------------------------------------------------------- at connect time
# The check at subscription time is not enough: DNS can answer differently
# when the webhook is sent (rebinding). The webhook client checks the
# addresses it is about to connect to, and connects to a checked one.


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the network: records where a connection was opened, opens none."""

    def __init__(self) -> None:
        self.connected: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        raise httpcore.ConnectError("test backend opens no connection")


def answering(*answers: list[str]) -> transport.Resolver:
    """A resolver giving these answers in turn (the last one from then on)."""
    queue = list(answers)

    async def resolve(host: str, port: int) -> list[str]:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return resolve


def subscription(url: str) -> Subscription:
    now = datetime.now(UTC)
    return Subscription(
        id="sub_1",
        tenant_id="t1",
        event_types=["report.ready"],
        url=url,
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        created_at=now,
    )


def delivery() -> Delivery:
    now = datetime.now(UTC)
    return Delivery(
        id="msg_1",
        tenant_id="t1",
        case_id="case-1",
        subscription_id="sub_1",
        event_id="e1",
        event_type="report.ready",
        payload={"type": "report.ready", "data": {}},
        next_attempt_at=now,
        lease_until=now,
        created_at=now,
    )


async def send_with(settings: NotifySettings, url: str, resolver: transport.Resolver) -> Any:
    inner = RecordingBackend()
    backend = transport.GuardedBackend(
        allow_loopback=settings.dev_mode and settings.allow_loopback_webhooks,
        resolver=resolver,
        inner=inner,
    )
    async with httpx.AsyncClient(transport=transport.guarded_transport(backend)) as client:
        channel = WebhookChannel(client, settings, ManualClock(datetime.now(UTC)))
        result = await channel.send(subscription(url), delivery())
    return result, inner.connected


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::",
        "::ffff:0:a9fe:a9fe",
        "::ffff:169.254.169.254",
        "64:ff9b:1::a9fe:a9fe",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "169.254.169.254",
        "10.0.0.1",
        "127.0.0.1",
    ],
)
def test_a_name_rebound_to_a_private_address_is_refused_at_connect_time(address: str) -> None:
    """Production settings: the name was public when the tenant subscribed; when
    the webhook is sent it resolves to a private address (or an IPv6 form of
    one). No connection is opened, and the delivery fails for good."""
    resolver = answering(["93.184.216.34"], [address])
    url = asyncio.run(validate_url("https://partner.example/hook", PRODUCTION, resolver))
    result, connected = asyncio.run(send_with(PRODUCTION, url, resolver))
    assert connected == []
    assert not result.ok and not result.retryable and "resolves to a" in result.error


def test_a_host_with_one_private_address_among_public_ones_is_refused_at_connect_time() -> None:
    result, connected = asyncio.run(
        send_with(PRODUCTION, "https://partner.example/h", answering(["93.184.216.34", "10.0.0.1"]))
    )
    assert connected == [] and not result.retryable


def test_the_connection_goes_to_the_checked_address() -> None:
    resolver = answering(["2606:4700::1111", "93.184.216.34"])
    result, connected = asyncio.run(send_with(PRODUCTION, "https://partner.example/h", resolver))
    # Both checked, tried in turn (the test backend refuses each): never the name itself.
    assert connected == [("2606:4700::1111", 443), ("93.184.216.34", 443)]
    assert result.retryable and result.error == "ConnectError"


class NamedHostReceiver:
    """A loopback HTTP server keeping each request's Host and User-Agent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                outer.seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def named_receiver() -> Iterator[NamedHostReceiver]:
    rx = NamedHostReceiver()
    yield rx
    rx.server.shutdown()


def test_a_pinned_connection_keeps_the_host_header_and_says_who_sends(
    named_receiver: NamedHostReceiver,
) -> None:
    """Development settings (loopback allowed): the name resolves (in the test's
    resolver only) to the receiver on 127.0.0.1; the request reaches it with the
    partner's name as Host, and notify's own User-Agent."""
    url = f"http://partner.example:{named_receiver.port}/hook"

    async def send() -> Any:
        client = transport.webhook_client(5, allow_loopback=True, resolver=answering(["127.0.0.1"]))
        async with client:
            channel = WebhookChannel(client, DEVELOPMENT, ManualClock(datetime.now(UTC)))
            return await channel.send(subscription(url), delivery())

    result = asyncio.run(send())
    assert result.ok, result
    [headers] = named_receiver.seen
    assert headers["host"] == f"partner.example:{named_receiver.port}"
    assert headers["user-agent"].startswith("second-opinion-router-notify/")
    assert "python-httpx" not in headers["user-agent"]


def test_the_webhook_client_ignores_proxy_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, named_receiver: NamedHostReceiver
) -> None:
    """An HTTP(S)_PROXY in the environment would send webhooks (and the choice of
    address) to the proxy, past the connect-time check."""
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://10.0.0.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.0.0.1:3128")

    async def send() -> Any:
        client = transport.webhook_client(5, allow_loopback=True, resolver=answering(["127.0.0.1"]))
        async with client:
            return await client.post(
                f"http://partner.example:{named_receiver.port}/h", content="{}"
            )

    assert asyncio.run(send()).status_code == 204


def test_the_name_checked_is_the_one_stored_and_connected_to() -> None:
    """An internationalised name is resolved as its A-labels (what httpx connects
    to), not re-encoded by the resolver's own IDNA 2003 codec."""
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["93.184.216.34"]

    url = asyncio.run(validate_url("https://münchen.example:8443/x", PRODUCTION, resolver))
    assert url == "https://xn--mnchen-3ya.example:8443/x"
    assert asked == [("xn--mnchen-3ya.example", 8443)]

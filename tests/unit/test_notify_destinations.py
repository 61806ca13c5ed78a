"""What a tenant may register as a destination (issue 15, findings 5, 6, 8):
webhook URLs are normalised with a URL parser and IDNA, and only URLs httpx
can send are accepted; addresses are judged with the IPv4 they embed; e-mail
addresses are plain ASCII dot-atom at an IDNA domain."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify import destinations, domain
from shared.errors import InvalidInput, UnregisteredEndpoint


def normalise(url: str, production: bool = False) -> str:
    return destinations.normalise_webhook_url(url, production=production)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:18990/x\r\nX: 1",  # header injection in the path
        "http://127.0.0.1:18990/x\nX: 1",
        "http://\u0661\u0662\u0667.\u0660.\u0660.\u0661/x",  # Arabic-Indic digits
        "http://\uff11\uff12\uff17.0.0.1/x",  # full-width digits
        "http://partner\u202e.example/x",  # a bidi override in the host
        "http://part%20ner.example/x",
        "http://partner_x.example/x",
        "http://-partner.example/x",
        "http://partner.example:0/x",
        "http://partner.example:99999/x",
        "http://user@partner.example/x",
        "http://:pw@partner.example/x",
        "http://partner.example/x#frag",
        "http://partner.example/x#",
        "http://0xa9fea9fe/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://10.1/",
        "javascript:alert(1)",
        "http:///x",
        "",
    ],
)
def test_malformed_urls_are_refused_at_subscription_time(url: str) -> None:
    with pytest.raises(UnregisteredEndpoint):
        normalise(url)


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://Partner.Example/hook", "https://partner.example/hook"),
        ("https://münchen.example/a b?q=ä", "https://xn--mnchen-3ya.example/a%20b?q=%C3%A4"),
        ("https://partner.example./hook", "https://partner.example/hook"),
        ("https://[2606:4700:0::1111]:8443/h", "https://[2606:4700::1111]:8443/h"),
        ("https://partner.example:443/h", "https://partner.example/h"),
    ],
)
def test_the_stored_url_is_the_normalised_one(url: str, stored: str) -> None:
    assert normalise(url) == stored
    assert normalise(stored) == stored  # normalising is idempotent


def test_production_takes_https_only() -> None:
    assert normalise("https://partner.example/h", production=True)
    with pytest.raises(UnregisteredEndpoint, match="https"):
        normalise("http://partner.example/h", production=True)


@given(st.text(max_size=60), st.sampled_from(["http://", "https://", ""]))
def test_any_accepted_url_is_one_httpx_can_send(tail: str, scheme: str) -> None:
    try:
        url = normalise(scheme + tail)
    except UnregisteredEndpoint:
        return
    request = httpx.Request("POST", url)
    assert request.url.scheme in ("http", "https") and request.url.host
    assert url.isascii() and url.isprintable() and " " not in url
    assert normalise(url) == url


@given(
    st.from_regex(
        r"[a-z0-9\-\u00e0-\u00ff\u0660-\u0669\uff10-\uff19\u202e.]{1,30}", fullmatch=True
    ),
    st.text(max_size=20),
)
def test_any_accepted_host_and_path_build_a_request(host: str, path: str) -> None:
    try:
        url = normalise(f"https://{host}/{path}")
    except UnregisteredEndpoint:
        return
    httpx.Request("POST", url)
    assert not any(ch.isdigit() and not ch.isascii() for ch in httpx.URL(url).host)


EMBEDDING_METADATA = [
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix, 169.254.169.254
    "64:ff9b::10.0.0.1",
    "64:ff9b::127.0.0.1",
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:0a00:0001::1",  # 6to4 of 10.0.0.1
    "::ffff:0:a9fe:a9fe",  # IPv4-translated
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::a9fe:a9fe",  # IPv4-compatible
    "64:ff9b:1::a9fe:a9fe",  # NAT64 local-use prefix
    "64:ff9b:1:1234::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]


@pytest.mark.parametrize("address", EMBEDDING_METADATA)
def test_ipv6_forms_embedding_a_private_ipv4_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert destinations.refusal(ip, allow_loopback=False)
    assert destinations.refusal(ip, allow_loopback=True)  # loopback is never reached this way
    with pytest.raises(UnregisteredEndpoint):
        destinations.check_addresses([address], allow_loopback=True)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]
)
def test_public_addresses_and_nat64_of_public_ipv4_pass(address: str) -> None:
    assert destinations.refusal(ipaddress.ip_address(address), allow_loopback=False) == ""


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(UnregisteredEndpoint):
        destinations.check_addresses(["93.184.216.34", "10.0.0.1"], allow_loopback=False)
    with pytest.raises(UnregisteredEndpoint, match="does not resolve"):
        destinations.check_addresses([], allow_loopback=False)


@pytest.mark.parametrize(
    "address",
    [
        "a@b",
        "x y@clinic.example",
        "<a@b.example>",
        "a@b.example,c@d.example",
        "dr.who@clinic.example\n",  # a header injection the old pattern let through
        "dr.who@clinic.example\r\nBcc: x@evil.example",
        "dr\u202e.who@clinic.example",  # bidi override in the local part
        "dr.who@clinic\u202e.example",  # and in the domain
        "dr\u200b.who@clinic.example",  # zero-width space
        "dr\x00who@clinic.example",
        "dr\x1bwho@clinic.example",
        '"quoted"@clinic.example',
        "dr..who@clinic.example",
        ".dr@clinic.example",
        "dr.who@-clinic.example",
        "dr.who@clinic.e1",
        "dr.who@\uff43linic.example",  # full-width letter
    ],
)
def test_odd_email_addresses_refused(address: str) -> None:
    with pytest.raises(InvalidInput):
        domain.check_email_address(address)


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("dr.who@clinic.example", "dr.who@clinic.example"),
        ("Dr.Who+notify@Clinic.Example", "Dr.Who+notify@clinic.example"),
        ("dr@klinik-münchen.example", "dr@xn--klinik-mnchen-3ob.example"),
    ],
)
def test_plain_addresses_are_accepted_and_normalised(address: str, stored: str) -> None:
    assert domain.check_email_address(address) == stored


def test_report_links_are_built_from_the_ids_not_taken_from_the_event() -> None:
    data = {
        "case_id": "case-1",
        "report_id": "r/../1",
        "links": {"report": "https://phish.example/login", "pdf": "https://phish.example/p"},
    }
    delivered = domain.payload_data("report.ready", data, "https://reports.example/")
    base = "https://reports.example/v1/reports/r%2F..%2F1"
    assert delivered["links"] == {
        "report": base,
        "fhir": f"{base}/fhir",
        "pdf": f"{base}/pdf",
        "signature": f"{base}/signature",
    }
    other = domain.payload_data("sla.breached", {"case_id": "c", "links": {"x": "y"}}, "https://r")
    assert "links" not in other

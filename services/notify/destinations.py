"""Which destinations a tenant may register, free of I/O: a webhook URL is
parsed and normalised with httpx's URL parser and IDNA (never by string
slicing), an address is judged with everything it embeds, and an e-mail
address is plain ASCII dot-atom at an IDNA domain.

The stored URL is the normalised one, so what the dispatcher later sends to is
exactly what was checked, and always a URL httpx can build a request for.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import httpx
import idna

from shared.errors import InvalidInput, UnregisteredEndpoint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address in their low 32 bits (RFC 4291 mapped
# and compatible, RFC 2765 translated, RFC 6052 NAT64 well-known prefix).
_LOW_32_EMBEDDING = [
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix
]
# Ranges refused whatever they embed: NAT64 local-use (RFC 8215, a network's
# own translator, so its targets are that network's) and Teredo (RFC 4380).
_REFUSED_V6 = [
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("2001::/32"),
]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to `ip` may end up at (6to4, NAT64, mapped...)."""
    found = [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) for net in _LOW_32_EMBEDDING if ip in net]
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def refusal(ip: IPAddress, *, allow_loopback: bool) -> str:
    """Why a connection to `ip` is refused ("" if it is allowed): it must be
    public, and so must every IPv4 address it embeds. Loopback passes only
    with `allow_loopback` (local development)."""
    if ip.is_loopback:
        return "" if allow_loopback else f"a loopback address ({ip})"
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _REFUSED_V6):
            return f"a non-public address ({ip})"
        for inner in embedded_ipv4(ip):
            if inner.is_loopback or refusal(inner, allow_loopback=False):
                return f"a non-public address ({ip} embeds {inner})"
    if not ip.is_global or ip.is_multicast:
        return f"a non-public address ({ip})"
    return ""


def check_addresses(addresses: list[str], *, allow_loopback: bool) -> list[IPAddress]:
    """Every address a host resolves to, checked; UnregisteredEndpoint if any is refused."""
    if not addresses:
        raise UnregisteredEndpoint("webhook host does not resolve")
    checked = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    for ip in checked:
        why = refusal(ip, allow_loopback=allow_loopback)
        if why:
            raise UnregisteredEndpoint(f"webhook host resolves to {why}")
    return checked


def _numeric_label(label: str) -> bool:
    """A label some resolvers read as (part of) an IPv4 number: 10, 0x0a, 012."""
    lowered = label.lower()
    if lowered.startswith("0x"):
        return all(c in "0123456789abcdef" for c in lowered[2:])
    return label.isascii() and label.isdigit()


def _normalised_host(host: str) -> str:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    if any(not c.isascii() and unicodedata.category(c) == "Nd" for c in host):
        raise UnregisteredEndpoint("webhook host must not contain non-ASCII digits")
    labels = host.rstrip(".").split(".")
    if labels and _numeric_label(labels[-1]):
        # 0xa9fea9fe, 2852039166, 0251.0376.0251.0376: an IPv4 address in disguise.
        raise UnregisteredEndpoint("webhook host is a non-canonical IPv4 address")
    try:
        return idna.encode(host.rstrip("."), strict=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise UnregisteredEndpoint("webhook host is not a valid host name") from None


def normalise_webhook_url(raw: str, *, production: bool) -> str:
    """The canonical form of a webhook URL, or UnregisteredEndpoint: absolute
    http(s) (https only in production), a valid host name (IDNA, no control
    characters, no Unicode digits) or IP literal, a port in range, no
    credentials, no fragment."""
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UnregisteredEndpoint("webhook URL is malformed") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise UnregisteredEndpoint("webhook URL must be an absolute http(s) URL")
    if production and url.scheme != "https":
        raise UnregisteredEndpoint("webhook URL must use https")
    if url.userinfo:
        raise UnregisteredEndpoint("webhook URL must not carry credentials")
    if url.fragment or "#" in raw:
        raise UnregisteredEndpoint("webhook URL must not have a fragment")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise UnregisteredEndpoint("webhook URL port is out of range")
    try:
        normalised = url.copy_with(host=_normalised_host(url.host), fragment=None)
        text = str(normalised)
        httpx.Request("POST", text)  # what the dispatcher will do with it
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UnregisteredEndpoint("webhook URL is malformed") from None
    if not text.isascii() or not text.isprintable() or " " in text:
        raise UnregisteredEndpoint("webhook URL is malformed")
    return text


# RFC 5322 dot-atom, ASCII only: no quoted local parts, comments, control,
# format (bidi) or non-ASCII characters; the domain goes through IDNA.
_ATOM = r"[A-Za-z0-9!#$%&*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_TOP_LEVEL = re.compile(r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})")


def check_email_address(address: str) -> str:
    """A plain address, normalised (the domain as IDNA A-labels, lower case)."""
    local, at, host = address.rpartition("@")
    if not at or len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise InvalidInput("not a plain e-mail address")
    try:
        ascii_host = idna.encode(host, strict=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise InvalidInput("not a plain e-mail address") from None
    labels = ascii_host.split(".")
    if len(labels) < 2 or len(ascii_host) > 253 or not _TOP_LEVEL.fullmatch(labels[-1]):
        raise InvalidInput("not a plain e-mail address")
    return f"{local}@{ascii_host}"

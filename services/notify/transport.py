"""The webhook client's connections: the SSRF check happens where the socket is
opened, on the addresses actually connected to.

`GuardedBackend` is an httpcore network backend: for each new connection it
resolves the host name once, checks every address (destinations.refusal,
embedded IPv4 included) and connects to a checked address, so a DNS answer
that changes between the check and the connect (rebinding) cannot redirect
the request. The request keeps its URL, so the Host header and the TLS server
name (httpcore passes the origin's host to start_tls) stay the partner's name.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata
from typing import Any

import httpcore
import httpx

from services.notify import destinations

Resolver = Callable[[str, int], Awaitable[list[str]]]


def user_agent() -> str:
    try:
        version = metadata.version("second-opinion-router")
    except metadata.PackageNotFoundError:
        version = "0.1.0"
    return f"second-opinion-router-notify/{version}"


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for a TCP connection (empty if none)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(
        self,
        *,
        allow_loopback: bool,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow_loopback = allow_loopback
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolver(host.strip("[]"), port)
        except TimeoutError:
            raise httpcore.ConnectTimeout("name resolution timed out") from None
        # UnregisteredEndpoint (not an httpcore error) reaches the channel as is.
        checked = destinations.check_addresses(addresses, allow_loopback=self.allow_loopback)
        failure: Exception = httpcore.ConnectError("no address could be connected to")
        for ip in checked:
            try:
                return await self.inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks never go to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_transport(backend: GuardedBackend) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (TLS verification, HTTP/1.1, pooling) over `backend`.

    httpx 0.28 takes no network backend, so it is set on the transport's
    httpcore pool (pinned with httpx==0.28.1; tests/security/test_ssrf.py
    fails if connections stop going through it)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
    transport._pool._network_backend = backend
    return transport


def webhook_client(
    timeout: float, *, allow_loopback: bool, resolver: Resolver = resolve
) -> httpx.AsyncClient:
    """The client every webhook goes out on: guarded connections, no proxy from
    the environment, no redirects, notify's own User-Agent."""
    backend = GuardedBackend(allow_loopback=allow_loopback, resolver=resolver)
    return httpx.AsyncClient(
        transport=guarded_transport(backend),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": user_agent()},
    )

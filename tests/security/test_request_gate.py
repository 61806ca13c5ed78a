"""No route reads a byte of the body before the caller is authenticated, and none
reads past its cap (security review, finding 4: a 30 MB unauthenticated body to
notify grew it by 118 MB before the 401; a chunked body passed intake's cap).

Every route of every service, built in-process by its `create_service`, is
called at the ASGI level with a `receive` that counts what the application
pulls: without a valid key the answer is 401 and nothing was read; with one, a
body over the cap is refused with 413 having read at most one chunk past it."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.runtime import Service
from tests.fakes import MemoryAuditCollection

SERVICES = ("intake", "records_fetch", "assignment", "reporting", "notify")
# One development key per role: a route is called with the one its role allows.
DEV_KEYS = [
    f"Bearer {k}.dev-secret-{k}".encode()
    for k in ("demo-int", "demo-partner", "rev-neuro-1", "ops")
]


def _build(name: str) -> Service:
    module = importlib.import_module(f"services.{name}.app")
    service: Service = module.create_service()
    service.audit.collection = MemoryAuditCollection()  # type: ignore[assignment]
    return service


@pytest.fixture(scope="module")
def services() -> dict[str, Service]:
    return {name: _build(name) for name in SERVICES}


def _routes(api: FastAPI, *, with_body: bool = False) -> Iterator[tuple[str, str]]:
    for path, operations in api.openapi()["paths"].items():
        for method, operation in operations.items():
            if method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
                continue
            if with_body and "requestBody" not in operation:
                continue
            yield method.upper(), path.replace("{", "").replace("}", "")


@dataclass
class Call:
    body_chunks: list[bytes]
    pulled: int = 0
    status: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def receive(self) -> dict[str, Any]:
        if self.body_chunks:
            chunk = self.body_chunks.pop(0)
            self.pulled += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.body_chunks)}
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        self.sent.append(dict(message))


async def call(
    api: FastAPI, method: str, path: str, chunks: list[bytes], auth: bytes | None, length: bool
) -> Call:
    headers = [(b"content-type", b"application/json")]
    if auth is not None:
        headers.append((b"authorization", auth))
    if length:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "root_path": "",
        "state": {},
    }
    c = Call(list(chunks))
    await api(scope, c.receive, c.send)
    return c


def _all_routes(
    services: dict[str, Service], *, with_body: bool = False
) -> list[tuple[str, str, str]]:
    return [
        (name, method, path)
        for name, service in services.items()
        for method, path in _routes(service.api, with_body=with_body)
        if not service.is_public(path)
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.data(),
    auth=st.sampled_from([None, b"", b"Bearer", b"Bearer nope", b"Basic abc", b"Bearer ops.wrong"]),
    chunk=st.integers(min_value=1, max_value=65_536),
    chunks=st.integers(min_value=1, max_value=40),
    declare_length=st.booleans(),
)
async def test_no_route_reads_the_body_of_an_unauthenticated_call(
    services: dict[str, Service],
    data: st.DataObject,
    auth: bytes | None,
    chunk: int,
    chunks: int,
    declare_length: bool,
) -> None:
    name, method, path = data.draw(st.sampled_from(_all_routes(services)))
    body = [b"x" * chunk for _ in range(chunks)]
    c = await call(services[name].api, method, path, body, auth, declare_length)
    assert c.status == 401, (name, method, path)
    assert c.pulled == 0, f"{name} {method} {path} read {c.pulled} bytes before authenticating"
    assert json.loads(c.sent[1]["body"])["status"] == 401


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    services: dict[str, Service],
) -> None:
    for name, method, path in _all_routes(services):
        cap = services[name].settings.max_body_bytes
        body = [b"x" * (cap + 1)]
        c = await call(services[name].api, method, path, body, DEV_KEYS[-1], True)
        assert c.status == 413, (name, method, path, c.status)
        assert c.pulled == 0, f"{name} {method} {path} read {c.pulled} bytes"


async def test_a_chunked_body_over_the_cap_is_refused_when_it_passes_the_cap(
    services: dict[str, Service],
) -> None:
    """For every route that reads a body, called with a key of a role it allows."""
    chunk = 64 * 1024
    for name, method, path in _all_routes(services, with_body=True):
        cap = services[name].settings.max_body_bytes
        statuses = []
        for key in DEV_KEYS:
            body = [b"x" * chunk for _ in range(cap // chunk + 8)]
            c = await call(services[name].api, method, path, body, key, False)
            statuses.append(c.status)
            if c.status != 403:
                break
        assert c.status == 413, (name, method, path, statuses)
        assert c.pulled <= cap + chunk, f"{name} {method} {path} read {c.pulled} bytes"


async def test_a_public_route_has_the_smaller_public_cap(services: dict[str, Service]) -> None:
    reporting = services["reporting"]
    cap = reporting.settings.public_max_body_bytes
    body = [b"x" * 65_536 for _ in range(cap // 65_536 + 4)]
    c = await call(reporting.api, "POST", "/v1/verify", body, None, False)
    assert c.status == 413
    assert c.pulled <= cap + 65_536

"""Where the case page finds spans in production (docs/operations.md): `TempoTraces`
asks an OTLP backend's query API over real HTTP. Here the backend is a local HTTP
server answering `GET /api/traces/{id}` with OTLP/JSON the way Tempo does, ids in
hex (the OTLP/JSON spec) for one service and base64 (protobuf JSON mapping, as
some exporters write them) for another; an unknown trace is a 404."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from services.assignment.traces import TempoTraces

TRACE = "6ad29cdeb3d0517d642758a914baf1bf"
ROOT, CHILD = "a1b2c3d4e5f60718", "0102030405060708"


def b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def resource(service: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "router"}, "spans": spans}],
    }


BODY = {
    "resourceSpans": [
        resource(
            "notify",  # base64 ids, string nanos, enum names
            [
                {
                    "traceId": b64(TRACE),
                    "spanId": b64(CHILD),
                    "parentSpanId": b64(ROOT),
                    "name": "report.ready process",
                    "kind": "SPAN_KIND_CONSUMER",
                    "startTimeUnixNano": "1700000000200000000",
                    "endTimeUnixNano": "1700000000250000000",
                    "status": {"code": "STATUS_CODE_ERROR"},
                }
            ],
        ),
        resource(
            "intake",  # hex ids, as the OTLP/JSON spec says
            [
                {
                    "traceId": TRACE,
                    "spanId": ROOT.upper(),
                    "name": "POST /v1/cases",
                    "kind": 2,
                    "startTimeUnixNano": 1700000000000000000,
                    "endTimeUnixNano": 1700000000100000000,
                    "status": {},
                }
            ],
        ),
    ]
}


class Tempo(BaseHTTPRequestHandler):
    asked: list[str] = []

    def do_GET(self) -> None:
        Tempo.asked.append(f"{self.path} {self.headers.get('Accept')}")
        if self.path == f"/tempo/api/traces/{TRACE}":
            payload, status = json.dumps(BODY).encode(), 200
        else:
            payload, status = b'{"error":"trace not found"}', 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tempo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Tempo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tempo/"
    finally:
        server.shutdown()
        server.server_close()


async def test_spans_come_from_the_otlp_backend_over_http_with_hex_and_base64_ids(
    tempo_url: str,
) -> None:
    Tempo.asked.clear()
    async with httpx.AsyncClient(timeout=5) as client:
        traces = TempoTraces(tempo_url, client)
        spans = await traces.spans(TRACE)
        missing = await traces.spans("0" * 31 + "1")
        refused = await traces.spans("../../etc")  # not a trace id: never asked
    assert [(s.service, s.name, s.span_id, s.parent_id) for s in spans] == [
        ("intake", "POST /v1/cases", ROOT, ""),
        ("notify", "report.ready process", CHILD, ROOT),
    ]
    intake, notify = spans
    assert (intake.start_ns, intake.end_ns) == (1700000000000000000, 1700000000100000000)
    assert (notify.start_ns, notify.end_ns) == (1700000000200000000, 1700000000250000000)
    assert notify.kind == "CONSUMER" and notify.status == "ERROR" and intake.status == "UNSET"
    assert missing == [] and refused == []
    assert Tempo.asked == [
        f"/tempo/api/traces/{TRACE} application/json",
        f"/tempo/api/traces/{'0' * 31}1 application/json",
    ]

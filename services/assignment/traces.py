"""Where the case page finds a trace's spans (docs/operations.md).

Locally every service writes its spans, redacted, as JSON lines to
`TRACE_DIR/<service>.jsonl` (shared/telemetry.py); `FileTraces` reads the lines
of one trace id from those files. In production the spans go to an OTLP backend
(Grafana Tempo, Jaeger with its OTLP receiver): set `ASSIGNMENT_TRACE_QUERY_URL`
to its query API and `TempoTraces` asks `GET {url}/api/traces/{trace_id}`, which
answers OTLP/JSON (resourceSpans → scopeSpans → spans), turned into the same
span rows. Either way the page gets spans, never message bodies or statements
(they were cut before export).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import BaseModel

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_SPANS = 2000


class SpanRow(BaseModel):
    service: str
    name: str
    span_id: str
    parent_id: str
    kind: str
    start_ns: int
    end_ns: int
    status: str


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C traceparent ('' if there is none)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and TRACE_ID.match(parts[1]) else ""


class TraceSource(Protocol):
    async def spans(self, trace_id: str) -> list[SpanRow]: ...


class FileTraces:
    def __init__(self, trace_dir: Path) -> None:
        self.trace_dir = trace_dir

    async def spans(self, trace_id: str) -> list[SpanRow]:
        if not TRACE_ID.match(trace_id):
            return []
        needle = f'"trace_id": "{trace_id}"'
        out: list[SpanRow] = []
        for path in sorted(self.trace_dir.glob("*.jsonl")):
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    if needle in line and len(out) < MAX_SPANS:
                        s = json.loads(line)
                        out.append(_row(s))
        return sorted(out, key=lambda s: s.start_ns)


def _row(s: dict[str, Any]) -> SpanRow:
    return SpanRow(
        service=str(s.get("service") or "?"),
        name=str(s.get("name", "")),
        span_id=str(s.get("span_id", "")),
        parent_id=str(s.get("parent_id", "")),
        kind=str(s.get("kind", "")),
        start_ns=int(s.get("start") or 0),
        end_ns=int(s.get("end") or s.get("start") or 0),
        status=str(s.get("status", "")),
    )


class TempoTraces:
    """An OTLP backend's query API (Tempo's `/api/traces/{id}`, OTLP/JSON)."""

    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client

    async def spans(self, trace_id: str) -> list[SpanRow]:
        if not TRACE_ID.match(trace_id):
            return []
        resp = await self.client.get(
            f"{self.base_url}/api/traces/{trace_id}", headers={"Accept": "application/json"}
        )
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        return otlp_rows(resp.json())


def _hex(value: str) -> str:
    """OTLP/JSON ids are hex (the spec) or base64 (some exporters)."""
    if re.fullmatch(r"[0-9a-fA-F]*", value or ""):
        return (value or "").lower()
    import base64

    return base64.b64decode(value).hex()


def otlp_rows(body: dict[str, Any]) -> list[SpanRow]:
    rows: list[SpanRow] = []
    for rs in body.get("resourceSpans") or body.get("batches") or []:
        attrs = {a["key"]: a.get("value", {}) for a in rs.get("resource", {}).get("attributes", [])}
        service = str(attrs.get("service.name", {}).get("stringValue", "?"))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            for s in ss.get("spans", []):
                rows.append(
                    SpanRow(
                        service=service,
                        name=str(s.get("name", "")),
                        span_id=_hex(s.get("spanId", "")),
                        parent_id=_hex(s.get("parentSpanId", "")),
                        kind=str(s.get("kind", "")).removeprefix("SPAN_KIND_"),
                        start_ns=int(s.get("startTimeUnixNano") or 0),
                        end_ns=int(s.get("endTimeUnixNano") or 0),
                        status=str(s.get("status", {}).get("code", "UNSET")).removeprefix(
                            "STATUS_CODE_"
                        ),
                    )
                )
    return sorted(rows, key=lambda s: s.start_ns)[:MAX_SPANS]

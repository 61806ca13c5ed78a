"""Tracing set up once per process: faststream's Kafka middleware (added by
shared.runtime), pymongo and httpx instrumentation, and an exporter.

Spans are written as JSON lines to ``TRACE_DIR/<service>.jsonl`` (readable by a
person and by the end-to-end test that checks one trace id across services).
Before export every span passes `redact_attributes`: URL query strings and
database statements can carry patient identifiers (a QIDO-RS search by
PatientID, a Mongo filter), so they are cut. Case ids are fine; PHI is not.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_URL_KEYS = {"http.url", "url.full", "http.target", "url.query"}
_DROP_KEYS = {"db.statement", "db.query.text", "messaging.message.body"}


def redact_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes safe to export: no query strings, no statements."""
    clean: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in _DROP_KEYS:
            continue
        if isinstance(value, bytes):  # faststream records the Kafka key (the case id) as bytes
            value = value.decode(errors="replace")
        if key in _URL_KEYS and isinstance(value, str):
            if key == "url.query":
                continue
            parts = urlsplit(value)
            value = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        clean[key] = value
    return clean


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "service": span.resource.attributes.get("service.name"),
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
        "span_id": format(ctx.span_id, "016x") if ctx else "",
        "parent_id": format(parent.span_id, "016x") if parent else "",
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": redact_attributes(span.attributes or {}),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends redacted spans to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def setup_telemetry(service_name: str, trace_dir: Path) -> TracerProvider:
    """Install the global tracer provider and the pymongo/httpx instrumentation."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = JsonLinesSpanExporter(trace_dir / f"{service_name}.jsonl")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    PymongoInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    return provider


def quiet() -> AbstractContextManager[None]:
    """No spans inside: for background polls (outbox sweep, dispatcher) that would
    otherwise fill the traces with one-span traces every few seconds."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def current_traceparent() -> str:
    """The W3C traceparent of the active span ('' when there is none)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def attach_traceparent(traceparent: str) -> object | None:
    """Make `traceparent` the active context; returns a token for `detach`."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return otel_context.attach(ctx)


def detach(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]

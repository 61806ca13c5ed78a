"""Keeping the integrator's key out of intake's spans.

faststream's Kafka middleware records each message's key as the span attribute
`messaging.kafka.message.key`. On every other topic the key is a case id; on
`case.submitted` it is whatever the integrator chose, and integrators have keyed
it by their own external id, which may embed the patient's MRN. Intake needs
nothing from that key (docs/intake.md asks for an opaque one), so on spans of
`case.submitted` and its dead-letter topic the attribute is replaced before any
exporter sees it.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.semconv.trace import SpanAttributes

KEY = SpanAttributes.MESSAGING_KAFKA_MESSAGE_KEY
INTEGRATOR_TOPIC = "case.submitted"
TOPIC_ATTRIBUTES = (SpanAttributes.MESSAGING_DESTINATION_NAME, "messaging.destination_publish.name")
REDACTED = "<integrator key>"


class IntegratorKeyRedaction(SpanProcessor):
    """Replaces the Kafka key on spans of `case.submitted` (and `case.submitted.dlq`).

    The middleware sets the key when it starts the span, so it is there for
    `on_start`, while the span can still be changed."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = span.attributes or {}
        if KEY in attributes and any(
            str(attributes.get(name, "")).startswith(INTEGRATOR_TOPIC) for name in TOPIC_ATTRIBUTES
        ):
            span.set_attribute(KEY, REDACTED)

    def on_end(self, span: ReadableSpan) -> None:
        return None

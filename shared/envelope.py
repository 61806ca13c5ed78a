"""CloudEvents 1.0 in Kafka binary mode: the event's attributes travel as ``ce_*``
headers, the data as the JSON body, the W3C trace context as ``traceparent``.

The router also sets the extension attribute ``ce_tenantid`` so a consumer can
check tenant isolation without parsing the body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from shared.clock import SYSTEM_CLOCK
from shared.errors import UnknownEventType

SPEC_VERSION = "1.0"
# `ce_tenantid` is required too: every event names its tenant outside the body, and
# the consumer checks that the body's tenant is the same (shared.consumer).
REQUIRED_HEADERS = ("ce_id", "ce_type", "ce_source", "ce_specversion", "ce_tenantid")
CONTENT_TYPE = "application/json"


def new_event_id() -> str:
    return str(uuid.uuid4())


def ce_headers(
    *, event_id: str, ce_type: str, source: str, tenant_id: str, time: datetime | None = None
) -> dict[str, str]:
    """The binary-mode CloudEvents headers for one event."""
    return {
        "ce_specversion": SPEC_VERSION,
        "ce_id": event_id,
        "ce_type": ce_type,
        "ce_source": source,
        "ce_time": (time or SYSTEM_CLOCK.now()).isoformat(),
        "ce_tenantid": tenant_id,
        "content-type": CONTENT_TYPE,
    }


@dataclass(frozen=True)
class EventMeta:
    """The CloudEvents attributes of a consumed message."""

    event_id: str
    ce_type: str
    source: str
    time: str
    tenant_id: str

    @classmethod
    def from_headers(cls, headers: dict[str, Any]) -> EventMeta:
        h = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers.items()}
        missing = [k for k in REQUIRED_HEADERS if not h.get(k)]
        if missing:
            raise UnknownEventType(f"not a CloudEvent: missing headers {', '.join(missing)}")
        if h["ce_specversion"] != SPEC_VERSION:
            raise UnknownEventType(f"unsupported CloudEvents specversion {h['ce_specversion']!r}")
        return cls(
            event_id=h["ce_id"],
            ce_type=h["ce_type"],
            source=h["ce_source"],
            time=h.get("ce_time", ""),
            tenant_id=h["ce_tenantid"],
        )

    def occurred_at(self, default: datetime) -> datetime:
        """When the producer says the event happened (`ce_time`, optional in
        CloudEvents), or `default` when it did not say or said it unreadably."""
        try:
            at = datetime.fromisoformat(self.time)
        except ValueError:
            return default
        return at if at.tzinfo else at.replace(tzinfo=UTC)


class OutboxEntry(BaseModel):
    """An event written to the emitting service's own collection before it is
    published, so a crash between the write and the publish loses nothing."""

    id: str
    topic: str
    key: str
    ce_type: str
    tenant_id: str
    body: dict[str, Any]
    traceparent: str = ""
    created_at: datetime


def outbox_entry(
    event: Any,
    *,
    traceparent: str = "",
    key: str | None = None,
    now: datetime | None = None,
    topic: str | None = None,
) -> OutboxEntry:
    """Wrap a topic model instance (shared.events) as an outbox entry; `now` (the
    service's clock) dates it, the system clock when not given. `topic` publishes
    it elsewhere than its own topic (a tenant's partner channel,
    `shared.events.partner_topic`), with the same type and body."""
    return OutboxEntry(
        id=new_event_id(),
        topic=topic or event.topic,
        key=key or event.case_id,
        ce_type=event.ce_type(),
        tenant_id=event.tenant_id,
        body=event.model_dump(mode="json"),
        traceparent=traceparent,
        created_at=now or SYSTEM_CLOCK.now(),
    )

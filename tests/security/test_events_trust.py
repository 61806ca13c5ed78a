"""Events are trusted only with their tenant named outside the body, and a poison
message of any size leaves a visible dead letter (issue: security review,
findings 3 and 8). The consumer's rules with a fake broker; the real broker's
dead-lettering is shown in tests/integration/test_delivery.py."""

from __future__ import annotations

from typing import Any

from shared.envelope import EventMeta
from shared.events import CaseRejected
from tests.unit.test_consumer import EVENT, FakeMessage, FakeRecord, make, message


async def _never(event: CaseRejected, meta: EventMeta) -> None:
    raise AssertionError("the handler must not see this event")


async def test_an_event_without_a_tenant_header_is_dead_lettered_not_handled() -> None:
    c, broker = make()
    m = message(EVENT.model_dump_json().encode())
    del m.headers["ce_tenantid"]
    await c._process(CaseRejected, _never, m)
    [dlq] = broker.published
    assert "ce_tenantid" in dlq["headers"]["dlq_reason"]


async def test_an_event_whose_tenant_header_names_another_tenant_is_dead_lettered() -> None:
    c, broker = make()
    m = message(EVENT.model_dump_json().encode())
    m.headers["ce_tenantid"] = "other-tenant"
    await c._process(CaseRejected, _never, m)
    [dlq] = broker.published
    assert "does not match" in dlq["headers"]["dlq_reason"]


async def test_a_poison_message_near_the_broker_limit_leaves_a_bounded_dead_letter() -> None:
    c, broker = make()
    body = b"{" + b" " * 1_000_000 + b"}"
    m: Any = message(body)
    m = FakeMessage(body, m.headers, FakeRecord(value=body, offset=42))
    await c._process(CaseRejected, _never, m)
    [dlq] = broker.published
    assert dlq["body"] == b""
    assert dlq["headers"]["dlq_payload_omitted_bytes"] == str(len(body))
    assert dlq["headers"]["dlq_offset"] == "42" and dlq["headers"]["dlq_source_topic"]
    assert sum(len(k) + len(v) for k, v in dlq["headers"].items()) < 100_000

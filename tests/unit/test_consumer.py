"""The consumer's delivery rules, with a fake broker and message (the same rules
are shown against the real broker in tests/integration/test_delivery.py)."""

from dataclasses import dataclass, field
from typing import Any

from shared import consumer as consumer_mod
from shared.consumer import EventConsumer
from shared.envelope import EventMeta, ce_headers
from shared.errors import PermanentError, ProviderUnavailable
from shared.events import CaseRejected, FieldError
from shared.settings import ServiceSettings


@dataclass
class FakeRecord:
    topic: str = "case.rejected"
    partition: int = 0
    offset: int = 7
    key: bytes = b"c1"
    value: bytes = b""


@dataclass
class FakeMessage:
    body: bytes
    headers: dict[str, Any]
    raw_message: FakeRecord = field(default_factory=FakeRecord)


@dataclass
class FakeBroker:
    published: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, body: Any, **kw: Any) -> None:
        self.published.append({"body": body, **kw})


def message(body: bytes, ce_type: str = CaseRejected.ce_type()) -> FakeMessage:
    headers = ce_headers(event_id="e1", ce_type=ce_type, source="/t", tenant_id="t1")
    return FakeMessage(body, headers, FakeRecord(value=body))


EVENT = CaseRejected(
    case_id="c1", tenant_id="t1", external_id="x", errors=[FieldError(loc="a", msg="b", type="c")]
)


def make() -> tuple[EventConsumer, FakeBroker]:
    broker = FakeBroker()
    return EventConsumer(broker, ServiceSettings()), broker  # type: ignore[arg-type]


async def test_retryable_failures_are_retried_until_success(monkeypatch: Any) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(consumer_mod.asyncio, "sleep", no_sleep)
    c, broker = make()
    calls: list[str] = []

    async def handler(event: CaseRejected, meta: EventMeta) -> None:
        calls.append(meta.event_id)
        if len(calls) < 5:
            raise ProviderUnavailable("pacs down")

    await c._process(CaseRejected, handler, message(EVENT.model_dump_json().encode()))
    assert calls == ["e1"] * 5
    assert broker.published == []


async def test_permanent_failure_is_dead_lettered_with_reason() -> None:
    c, broker = make()

    async def handler(event: CaseRejected, meta: EventMeta) -> None:
        raise PermanentError("provider not registered")

    await c._process(CaseRejected, handler, message(EVENT.model_dump_json().encode()))
    [dlq] = broker.published
    assert dlq["topic"] == "case.rejected.dlq"
    assert dlq["headers"]["dlq_reason"] == "provider not registered"
    assert dlq["headers"]["dlq_offset"] == "7"


async def test_undecodable_and_unknown_version_go_to_dead_letter_without_calling_handler() -> None:
    c, broker = make()
    called = False

    async def handler(event: CaseRejected, meta: EventMeta) -> None:
        nonlocal called
        called = True

    await c._process(CaseRejected, handler, message(b"\x00\x01garbage"))
    await c._process(
        CaseRejected,
        handler,
        message(EVENT.model_dump_json().encode(), "org.secondopinion.case.rejected.v2"),
    )
    assert not called
    reasons = [p["headers"]["dlq_reason"] for p in broker.published]
    assert reasons[0].startswith("schema validation failed")
    assert "is not" in reasons[1]


async def test_a_bug_is_retried_a_few_times_then_dead_lettered(monkeypatch: Any) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(consumer_mod.asyncio, "sleep", no_sleep)
    c, broker = make()
    calls = 0

    async def handler(event: CaseRejected, meta: EventMeta) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("oops")

    await c._process(CaseRejected, handler, message(EVENT.model_dump_json().encode()))
    assert calls == consumer_mod.BUG_ATTEMPTS
    assert broker.published[0]["headers"]["dlq_reason"] == "handler failed: KeyError"

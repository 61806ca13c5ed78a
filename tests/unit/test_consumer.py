"""The consumer's delivery rules, with a fake broker and message (the same rules
are shown against the real broker in tests/integration/test_delivery.py)."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared import consumer as consumer_mod
from shared.aio import Slots, gather_all
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


class RecordedSleeps(list[float]):
    """The consumer's waits between retries, recorded instead of slept."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(sleeps: RecordedSleeps | None = None) -> tuple[EventConsumer, FakeBroker]:
    broker = FakeBroker()
    sleep = RecordedSleeps() if sleeps is None else sleeps
    consumer = EventConsumer(broker, ServiceSettings(), sleep=sleep)  # type: ignore[arg-type]
    return consumer, broker


async def test_retryable_failures_are_retried_until_success() -> None:
    sleeps = RecordedSleeps()
    c, broker = make(sleeps)
    calls: list[str] = []

    async def handler(event: CaseRejected, meta: EventMeta) -> None:
        calls.append(meta.event_id)
        if len(calls) < 5:
            raise ProviderUnavailable("pacs down")

    await c._process(CaseRejected, handler, message(EVENT.model_dump_json().encode()))
    assert calls == ["e1"] * 5
    assert broker.published == []
    # Four waits, each longer than the one before (exponential backoff).
    assert len(sleeps) == 4
    assert sleeps == sorted(sleeps) and sleeps[0] < sleeps[-1]


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


async def test_a_bug_is_retried_a_few_times_then_dead_lettered() -> None:
    c, broker = make()
    calls = 0

    async def handler(event: CaseRejected, meta: EventMeta) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("oops")

    await c._process(CaseRejected, handler, message(EVENT.model_dump_json().encode()))
    assert calls == consumer_mod.BUG_ATTEMPTS
    assert broker.published[0]["headers"]["dlq_reason"] == "handler failed: KeyError"


@dataclass
class FakeKafkaConsumer:
    commits: list[dict[Any, int]] = field(default_factory=list)
    fail: bool = False

    async def commit(self, offsets: dict[Any, int]) -> None:
        if self.fail:
            raise consumer_mod.KafkaError("rebalanced")
        self.commits.append(dict(offsets))


@dataclass
class Handled:
    consumer: FakeKafkaConsumer
    raw_message: FakeRecord


async def test_offsets_are_gathered_into_one_commit_per_consumer() -> None:
    committer = consumer_mod.OffsetCommitter(interval=0.05)
    a, b = FakeKafkaConsumer(), FakeKafkaConsumer()
    for offset in (3, 4, 5):
        committer.processed(Handled(a, FakeRecord(partition=0, offset=offset)))
    committer.processed(Handled(a, FakeRecord(partition=1, offset=9)))
    committer.processed(Handled(b, FakeRecord(topic="other", offset=0)))
    assert a.commits == [] and b.commits == []  # nothing in the handler's path
    await asyncio.sleep(0.2)
    tp = consumer_mod.TopicPartition
    assert a.commits == [{tp("case.rejected", 0): 6, tp("case.rejected", 1): 10}]
    assert b.commits == [{tp("other", 0): 1}]


async def test_a_failed_commit_is_logged_not_raised_and_flush_commits_at_once() -> None:
    committer = consumer_mod.OffsetCommitter(interval=60)
    lost, kept = FakeKafkaConsumer(fail=True), FakeKafkaConsumer()
    committer.processed(Handled(lost, FakeRecord(offset=1)))
    committer.processed(Handled(kept, FakeRecord(offset=2)))
    await committer.flush()  # shutdown: no waiting for the interval
    assert lost.commits == []  # redelivered later, skipped by the idempotency guard
    assert kept.commits == [{consumer_mod.TopicPartition("case.rejected", 0): 3}]


async def test_gather_all_lets_every_part_finish_then_raises_the_first_failure() -> None:
    finished: list[str] = []

    async def ok(name: str, delay: float) -> str:
        await asyncio.sleep(delay)
        finished.append(name)
        return name

    async def broken() -> str:
        raise ProviderUnavailable("provider unreachable: ConnectError")

    assert await gather_all(ok("a", 0.01), ok("b", 0)) == ["a", "b"]
    finished.clear()
    with pytest.raises(ProviderUnavailable):
        await gather_all(ok("slow", 0.05), broken())
    assert finished == ["slow"]  # not cancelled by the other's failure


async def test_slots_are_shared_by_waiting_loops_and_handed_work() -> None:
    slots = Slots(2)
    release_jobs = asyncio.Event()
    ran: list[str] = []

    async def job(name: str, fail: bool = False) -> None:
        await release_jobs.wait()
        ran.append(name)
        if fail:
            raise RuntimeError("a failed retrieval still frees its slot")

    assert await slots.try_take() and await slots.try_take()
    assert not await slots.try_take()  # both taken: handed work is refused, not queued
    slots.start(job("a"), name="a")
    slots.start(job("b", fail=True), name="b")
    looped = asyncio.create_task(slots.__aenter__())  # a polling loop waits for a slot
    await asyncio.sleep(0.01)
    assert not looped.done()
    release_jobs.set()
    await asyncio.wait_for(looped, 1)  # freed by the jobs' end, the failed one's too
    assert sorted(ran) == ["a", "b"]
    assert await slots.try_take()  # the second slot is free as well
    assert not await slots.try_take()

"""Delivery semantics (docs/architecture.md) against the real broker and database:
idempotent handlers, dead-lettered poison messages with the partition moving
on, and the outbox relay publishing CloudEvents."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pymongo.asynchronous.database import AsyncDatabase

from shared.consumer import COMMIT_INTERVAL_SECONDS, EventConsumer, raw_body
from shared.envelope import EventMeta, ce_headers, outbox_entry
from shared.events import CaseRejected, FieldError
from shared.runtime import ensure_topics
from shared.settings import ServiceSettings
from shared.store import Doc, OutboxRelay, apply_once
from tests.conftest import eventually


def event_model() -> type[CaseRejected]:
    class ItRejected(CaseRejected):
        topic: ClassVar[str] = f"it.rejected.{uuid.uuid4().hex[:8]}"

    return ItRejected


def event(model: type[CaseRejected], case_id: str) -> CaseRejected:
    return model(
        case_id=case_id,
        tenant_id="t1",
        external_id="x",
        errors=[FieldError(loc="a", msg="b", type="c")],
    )


async def test_poison_messages_are_dead_lettered_and_redeliveries_skipped(
    infra: dict[str, Any], db: AsyncDatabase[Doc]
) -> None:
    model = event_model()
    await ensure_topics(infra["kafka_bootstrap"], [model.topic, f"{model.topic}.dlq"], 3)
    settings = ServiceSettings(
        service_name=f"it{uuid.uuid4().hex[:6]}", kafka_bootstrap=infra["kafka_bootstrap"]
    )
    broker = KafkaBroker(infra["kafka_bootstrap"])
    consumer = EventConsumer(broker, settings)
    coll = db["state"]
    calls: list[str] = []
    dead: list[dict[str, str]] = []

    @consumer.on(model)
    async def handle(ev: CaseRejected, meta: EventMeta) -> None:
        calls.append(meta.event_id)
        await apply_once(coll, ev.case_id, meta.event_id, {"$inc": {"n": 1}})

    @broker.subscriber(
        f"{model.topic}.dlq",
        group_id=f"{settings.service_name}.dlq",
        auto_offset_reset="earliest",
        decoder=raw_body,
    )
    async def dlq(message: KafkaMessage) -> None:
        dead.append(
            {k: v.decode() if isinstance(v, bytes) else v for k, v in message.headers.items()}
        )

    async with broker:
        await broker.start()
        good = event(model, "c1").model_dump_json().encode()
        hdr = ce_headers(event_id="e1", ce_type=model.ce_type(), source="/it", tenant_id="t1")
        await broker.publish(good, topic=model.topic, key=b"c1", headers=hdr)
        await broker.publish(
            b"\xff\xfenot json", topic=model.topic, key=b"c1", headers={**hdr, "ce_id": "e2"}
        )
        wrong = {**hdr, "ce_id": "e3", "ce_type": model.ce_type().replace(".v1", ".v7")}
        await broker.publish(good, topic=model.topic, key=b"c1", headers=wrong)
        await broker.publish(good, topic=model.topic, key=b"c1", headers=hdr)  # redelivery of e1
        await broker.publish(
            event(model, "c2").model_dump_json().encode(),
            topic=model.topic,
            key=b"c2",
            headers={**hdr, "ce_id": "e4"},
        )

        await eventually(lambda: _true(len(calls) == 3 and len(dead) == 2), within=60)

    assert sorted(calls) == ["e1", "e1", "e4"]
    assert (await coll.find_one({"_id": "c1"}) or {})["n"] == 1  # redelivery skipped
    assert (await coll.find_one({"_id": "c2"}) or {})["n"] == 1
    reasons = sorted(d["dlq_reason"] for d in dead)
    assert reasons[0].startswith("ce_type") and ".v7" in reasons[0]
    assert reasons[1].startswith("schema validation failed")
    assert all(d["dlq_source_topic"] == model.topic for d in dead)


async def _true(value: bool) -> bool:
    return value


async def test_outbox_relay_publishes_cloudevents_once_and_clears_the_outbox(
    infra: dict[str, Any], db: AsyncDatabase[Doc]
) -> None:
    model = event_model()
    await ensure_topics(infra["kafka_bootstrap"], [model.topic], 3)
    broker = KafkaBroker(infra["kafka_bootstrap"])
    coll = db["cases"]
    received: list[tuple[bytes, dict[str, Any]]] = []

    @broker.subscriber(
        model.topic, group_id=f"relay{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest"
    )
    async def sink(message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple)
        received.append((record.key, dict(message.headers)))

    entry = outbox_entry(event(model, "c9"))
    first = await apply_once(coll, "c9", "in-1", {"$set": {"stage": "x"}}, [entry])
    again = await apply_once(
        coll, "c9", "in-1", {"$set": {"stage": "x"}}, [outbox_entry(event(model, "c9"))]
    )
    assert first and not again  # the same input event emits once

    async with broker:
        await broker.start()
        relay = OutboxRelay(broker, "/it", [coll])
        assert await relay.flush() == 1
        assert await relay.flush() == 0
        await eventually(lambda: _true(len(received) == 1), within=60)

    key, headers = received[0]
    assert key == b"c9"
    assert headers["ce_id"] == entry.id and headers["ce_type"] == model.ce_type()
    assert headers["ce_specversion"] == "1.0" and headers["ce_tenantid"] == "t1"
    doc = await coll.find_one({"_id": "c9"})
    assert doc is not None and doc["outbox"] == [] and doc["has_outbox"] is False


async def test_the_running_relay_publishes_each_documents_entries_once_and_in_order(
    infra: dict[str, Any], db: AsyncDatabase[Doc]
) -> None:
    """The pipelined relay loop (shared.store.OutboxRelay.run) on the real broker and
    database: entries written one after another to several documents, while
    earlier ones are still being confirmed, arrive once each and, per document,
    in the order they were written; every outbox ends empty."""
    model = event_model()
    await ensure_topics(infra["kafka_bootstrap"], [model.topic], 3)
    broker = KafkaBroker(infra["kafka_bootstrap"])
    coll = db["relayed"]
    received: dict[str, list[str]] = {}

    @broker.subscriber(
        model.topic, group_id=f"relay{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest"
    )
    async def sink(message: KafkaMessage) -> None:
        record = message.raw_message
        assert not isinstance(record, tuple)
        received.setdefault(record.key.decode(), []).append(message.headers["ce_id"])

    cases = [f"r{n}" for n in range(6)]
    written: dict[str, list[str]] = {c: [] for c in cases}
    async with broker:
        await broker.start()
        relay = OutboxRelay(broker, "/it", [coll], sweep_seconds=30)
        running = asyncio.create_task(relay.run())
        try:
            for step in range(5):
                for case_id in cases:
                    entry = outbox_entry(event(model, case_id))
                    await apply_once(coll, case_id, None, {"$set": {"step": step}}, [entry])
                    written[case_id].append(entry.id)
                    relay.wake()
                await asyncio.sleep(0.01)  # the next writes meet unconfirmed ones
            await eventually(lambda: _true(sum(map(len, received.values())) >= 30), within=60)
            await asyncio.sleep(1)  # a duplicate would arrive by now
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    assert received == written  # once each, and in order per document
    left = await coll.count_documents({"has_outbox": True})
    assert left == 0


async def test_offsets_are_committed_soon_after_processing_and_never_ahead_of_it(
    infra: dict[str, Any], db: AsyncDatabase[Doc]
) -> None:
    """Commits are gathered (shared.consumer.OffsetCommitter): the broker's committed
    offset trails the handled messages by at most a moment, and never passes one
    whose handler has not returned."""
    model = event_model()
    await ensure_topics(infra["kafka_bootstrap"], [model.topic, f"{model.topic}.dlq"], 1)
    settings = ServiceSettings(
        service_name=f"it{uuid.uuid4().hex[:6]}", kafka_bootstrap=infra["kafka_bootstrap"]
    )
    group = f"{settings.consumer_group}.{model.topic}"
    broker = KafkaBroker(infra["kafka_bootstrap"])
    consumer = EventConsumer(broker, settings)
    release = asyncio.Event()
    calls: list[str] = []

    @consumer.on(model)
    async def handle(ev: CaseRejected, meta: EventMeta) -> None:
        calls.append(meta.event_id)
        if meta.event_id == "e3":
            await release.wait()  # the third message is still being handled

    async def committed() -> int:
        # A fresh group member asks the broker (Tansu answers the consumer's offset
        # fetch; its admin-client variant is one of the quirks of infra.md).
        probe = AIOKafkaConsumer(
            bootstrap_servers=infra["kafka_bootstrap"], group_id=group, enable_auto_commit=False
        )
        await probe.start()
        try:
            return await probe.committed(TopicPartition(model.topic, 0)) or 0
        finally:
            await probe.stop()

    async with broker:
        await broker.start()
        body = event(model, "c1").model_dump_json().encode()
        for n in (1, 2, 3):
            hdr = ce_headers(
                event_id=f"e{n}", ce_type=model.ce_type(), source="/it", tenant_id="t1"
            )
            await broker.publish(body, topic=model.topic, key=b"c1", headers=hdr)
        await eventually(lambda: _true(len(calls) == 3), within=60)
        await eventually(lambda: _equal(committed(), 2), within=10)  # e1, e2: not e3
        await asyncio.sleep(3 * COMMIT_INTERVAL_SECONDS)
        assert await committed() == 2
        release.set()
        await eventually(lambda: _equal(committed(), 3), within=10)


async def _equal(value: Awaitable[int], expected: int) -> bool:
    return await value == expected

"""One unpublishable event must not stall the outbox relay (security review,
finding 1): on the real broker and database, a document whose outbox holds an
event larger than the broker takes, written before every other document, is
set aside with a dead-letter record and a counter, while its own later event
and every other document's events are published."""

from __future__ import annotations

import uuid
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase

from shared.envelope import outbox_entry
from shared.runtime import ensure_topics
from shared.store import Doc, OutboxRelay, apply_once
from tests.conftest import eventually
from tests.integration.conftest import db
from tests.integration.test_delivery import event, event_model

__all__ = ["db"]  # the real database fixture of the integration tier


def _set_aside(topic: str) -> float:
    value = REGISTRY.get_sample_value("router_outbox_dead_letters_total", {"topic": topic})
    return value or 0.0


async def test_an_oversized_event_is_set_aside_and_every_other_event_is_published(
    infra: dict[str, Any], db: AsyncDatabase[Doc]
) -> None:
    model = event_model()
    await ensure_topics(infra["kafka_bootstrap"], [model.topic], 1)
    broker = KafkaBroker(infra["kafka_bootstrap"])
    coll, dead = db["cases"], db["outbox_dead_letters"]
    received: list[str] = []

    @broker.subscriber(
        model.topic, group_id=f"stall{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest"
    )
    async def sink(message: KafkaMessage) -> None:
        received.append(message.headers["ce_id"])

    # An event of 1.2 MB as the review produced it (written raw: the contract's
    # bounds now refuse such a case at intake, so this stands for any entry the
    # broker cannot take, e.g. one written by an older version).
    huge = outbox_entry(event(model, "c-huge"))
    huge = huge.model_copy(update={"body": {**huge.body, "external_id": "é" * 600_000}})
    after_huge = outbox_entry(event(model, "c-huge"))
    others = [outbox_entry(event(model, f"c-{n}")) for n in range(3)]
    await apply_once(coll, "c-huge", None, {"$set": {"s": 1}}, [huge, after_huge])
    for n, entry in enumerate(others):
        await apply_once(coll, f"c-{n}", None, {"$set": {"s": 1}}, [entry])
    before = _set_aside(model.topic)

    async with broker:
        await broker.start()
        relay = OutboxRelay(broker, "/it", [coll], dead_letters=dead)
        await relay.flush()
        await eventually(lambda: _true(len(received) >= 4), within=60)

    assert sorted(received) == sorted([after_huge.id, *(e.id for e in others)])
    record = await dead.find_one({"_id": huge.id})
    assert record is not None and record["topic"] == model.topic
    assert "exceeds" in record["reason"] and record["doc_id"] == "c-huge"
    assert _set_aside(model.topic) == before + 1
    assert await coll.count_documents({"has_outbox": True}) == 0


async def _true(value: bool) -> bool:
    return value

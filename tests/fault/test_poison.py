"""Poison messages on every consumed topic land in `<topic>.dlq` with their
reason, for every service consuming the topic, and the partition keeps moving."""

from __future__ import annotations

import asyncio
import importlib
import json
import uuid
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.envelope import ce_headers
from shared.events import TOPIC_MODELS, dead_letter_topic
from tests.conftest import RunningStack

HUGE = 900_000  # under the 1 MiB default message limit, far over any real event


def poisons(topic: str) -> dict[str, tuple[bytes, list[tuple[str, bytes]]]]:
    """kind → (body, headers) of one poison message for `topic`."""
    ce_type = TOPIC_MODELS[topic].ce_type()  # type: ignore[attr-defined]

    def headers(**over: str) -> list[tuple[str, bytes]]:
        h = ce_headers(
            event_id=str(uuid.uuid4()), ce_type=ce_type, source="/fault", tenant_id="demo-health"
        )
        h.update(over)
        return [(k, v.encode()) for k, v in h.items()]

    wrong_types = json.dumps(
        {"case_id": 123, "tenant_id": ["demo-health"], "routing": "x"}
    ).encode()
    huge = json.dumps({"case_id": "c", "tenant_id": "demo-health", "blob": "x" * HUGE}).encode()
    return {
        "undecodable": (b"\xff\xfe\x00\x01 not json", headers()),
        "wrong_version": (b"{}", headers(ce_type=ce_type.rsplit(".v", 1)[0] + ".v99")),
        "wrong_types": (wrong_types, headers()),
        "huge": (huge, headers()),
        "no_cloudevent_headers": (b'{"case_id": "c"}', [("content-type", b"application/json")]),
    }


SERVICES = ("intake", "records_fetch", "assignment", "reporting", "notify")


def consumed_topics() -> dict[str, set[str]]:
    """topic → services consuming it, from each service's own subscriptions.

    Built by each service's `create_service()` (nothing connects at build time).
    The broker's group listing is no source for this: Tansu lists a group only
    once it has committed an offset, so a consumer that has not yet seen a
    message on its topic would be missed.
    """
    found: dict[str, set[str]] = defaultdict(set)
    for name in SERVICES:
        service = importlib.import_module(f"services.{name}.app").create_service()
        for subscriber in service.broker.subscribers:
            for topic in subscriber.topic_names:
                if topic in TOPIC_MODELS:
                    found[topic].add(service.settings.service_name)
    return found


async def publish_poisons(bootstrap: str, topics: list[str], marker: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=1_048_576)
    await producer.start()
    sent = 0
    try:
        for topic in topics:
            for kind, (body, headers) in poisons(topic).items():
                key = f"{marker}-{kind}".encode()
                await producer.send_and_wait(topic, body, key=key, headers=headers)
                sent += 1
    finally:
        await producer.stop()
    return sent


async def dead_letters(
    bootstrap: str, topics: list[str], marker: str, expected: int
) -> list[dict[str, Any]]:
    """DLQ records whose key carries `marker`, read until `expected` arrived (bounded)."""
    consumer = AIOKafkaConsumer(
        *[dead_letter_topic(t) for t in topics],
        bootstrap_servers=bootstrap,
        group_id=f"fault-dlq-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=2 * 1024 * 1024,
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while len(found) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    if r.key and r.key.decode().startswith(marker):
                        h = {k: v.decode() for k, v in r.headers}
                        found.append({"key": r.key.decode(), "size": len(r.value or b""), **h})
    finally:
        await consumer.stop()
    return found


async def test_poison_on_every_consumed_topic_is_dead_lettered_with_reason(
    running_stack: RunningStack,
) -> None:
    bootstrap = running_stack.infra["kafka_bootstrap"]
    consumers = consumed_topics()
    assert {
        "case.submitted",
        "case.accepted",
        "records.complete",
        "case.assigned",
        "report.ready",
    } <= set(consumers)
    topics = sorted(consumers)
    marker = f"poison-{uuid.uuid4().hex[:6]}"
    await publish_poisons(bootstrap, topics, marker)
    kinds = len(poisons(topics[0]))
    expected = sum(len(services) for services in consumers.values()) * kinds
    found = await dead_letters(bootstrap, topics, marker, expected)

    by_topic_service: dict[tuple[str, str], set[str]] = defaultdict(set)
    for d in found:
        assert d["dlq_reason"], d
        by_topic_service[(d["dlq_source_topic"], d["dlq_service"])].add(d["key"].rsplit("-", 1)[-1])
    for topic, services in consumers.items():
        for service in services:
            got = by_topic_service[(topic, service)]
            assert len(got) == kinds, f"{service} on {topic}: dead-lettered {sorted(got)}"
    # Too large to publish again whole: the dead letter names where the original
    # still is (topic, partition, offset) and its size.
    huge = [d for d in found if d["key"].endswith("-huge")]
    assert huge
    for d in huge:
        assert d["size"] == 0 and int(d["dlq_payload_omitted_bytes"]) > HUGE, d
        assert d["dlq_source_topic"] in consumers and int(d["dlq_offset"]) >= 0, d
    print(f"\npoison: {len(found)} dead letters across {len(topics)} topics / {expected} expected")

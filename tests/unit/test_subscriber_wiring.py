"""Every service's subscribers, wired by its own `create_service`, driven
in-process with faststream's `TestKafkaBroker` (no broker, no database): a
message no handler may see is dead-lettered by that service, on that topic's
`.dlq`, with the reason, and the next message of the topic is still taken.

What only a real broker shows (group joins, offsets committed after the write,
redelivery after a crash) is tested on the real broker: tests/integration/
test_delivery.py and tests/fault/test_poison.py.
"""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.clock import ManualClock
from shared.consumer import raw_body
from shared.envelope import ce_headers
from shared.events import TOPIC_MODELS, dead_letter_topic

SERVICES = ("intake", "records_fetch", "assignment", "reporting", "notify")


def poison_messages(topic: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    ce_type = TOPIC_MODELS[topic].ce_type()  # type: ignore[attr-defined]

    def headers(**over: str) -> dict[str, str]:
        h = ce_headers(
            event_id=str(uuid.uuid4()), ce_type=ce_type, source="/test", tenant_id="t-one"
        )
        return {**h, **over}

    return {
        "not a CloudEvent": (b'{"case_id": "c"}', {"content-type": "application/json"}),
        "undecodable": (b"\xff\xfe not json", headers()),
        "unknown version": (b"{}", headers(ce_type=ce_type.rsplit(".v", 1)[0] + ".v99")),
    }


@pytest.mark.parametrize("name", SERVICES)
async def test_each_subscriber_dead_letters_what_it_cannot_take(name: str) -> None:
    service = importlib.import_module(f"services.{name}.app").create_service(clock=ManualClock())
    topics = sorted({t for s in service.broker.subscribers for t in s.topic_names})
    assert topics and set(topics) <= set(TOPIC_MODELS)
    dead: list[dict[str, Any]] = []
    for topic in topics:

        @service.broker.subscriber(dead_letter_topic(topic), decoder=raw_body)
        async def collect(message: KafkaMessage) -> None:
            record: Any = message.raw_message
            dead.append({"topic": record.topic, **dict(message.headers)})

    sent: list[tuple[str, str]] = []
    async with TestKafkaBroker(service.broker) as broker:
        for topic in topics:
            for kind, (body, headers) in poison_messages(topic).items():
                await broker.publish(body, topic=topic, headers=headers)
                sent.append((topic, kind))

    assert len(dead) == len(sent), f"{name}: {len(dead)} dead letters for {len(sent)} poisons"
    for (topic, _kind), letter in zip(sent, dead, strict=True):
        assert letter["topic"] == dead_letter_topic(topic)
        assert letter["dlq_source_topic"] == topic
        assert letter["dlq_service"] == name
        assert letter["dlq_reason"]
    assert service.consumer.dead_lettered == len(sent)

"""A consumer stalled on purpose on the real broker raises the alarm (issue 22).

The project's consumer (shared/consumer.py) gets a handler that never returns
from its second message; more events arrive. The service's progress sampling
(shared/progress.py, as Service runs it) sees the offset stand still while the
partition's end grows and reports it stalled, and the Prometheus rule
ConsumerStalled, evaluated by promtool on the values the metrics showed, fires."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from shared.clock import SYSTEM_CLOCK
from shared.consumer import EventConsumer
from shared.envelope import EventMeta, ce_headers, new_event_id
from shared.events import Event
from shared.progress import END_OFFSET, OFFSET, STALLED, ConsumerProgress, sample_subscribers
from shared.settings import ServiceSettings
from tests.conftest import eventually
from tests.promrules import alerts_fired


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.asyncio(loop_scope="session")
async def test_a_consumer_stalled_on_purpose_is_reported_and_alarmed(
    infra: dict[str, Any],
) -> None:
    bootstrap = infra["kafka_bootstrap"]
    topic_name = f"it.stall.{uuid.uuid4().hex[:8]}"

    class StallProbe(Event):
        topic: ClassVar[str] = topic_name

    settings = ServiceSettings(service_name=f"stall_{uuid.uuid4().hex[:6]}")
    group = f"{settings.consumer_group}.{topic_name}"
    broker = KafkaBroker(bootstrap)
    consumer = EventConsumer(broker, settings)
    handled: list[str] = []
    never = asyncio.Event()

    @consumer.on(StallProbe)
    async def handle(event: Event, _meta: EventMeta) -> None:
        handled.append(event.case_id)
        if len(handled) == 2:
            await never.wait()  # the stall: this handler never returns

    progress = ConsumerProgress(SYSTEM_CLOCK, stall_seconds=1.0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    await broker.start()

    async def send(i: int) -> None:
        event = StallProbe(case_id=f"c-{i}", tenant_id="demo-health")
        headers = ce_headers(
            event_id=new_event_id(),
            ce_type=StallProbe.ce_type(),
            source="/it",
            tenant_id="demo-health",
        )
        await producer.send_and_wait(
            topic_name,
            event.model_dump_json().encode(),
            key=b"one-partition",
            headers=[(k, v.encode()) for k, v in headers.items()],
        )

    try:
        for i in range(2):
            await send(i)

        async def stuck() -> bool:
            return len(handled) == 2

        await eventually(stuck, within=30)
        for i in range(2, 6):
            # The partition grows under the stalled consumer. Spaced out: Tansu's
            # ListOffsets takes the newest object by its modification time (seconds).
            await asyncio.sleep(0.4)
            await send(i)

        values: list[tuple[float, float, float]] = []

        async def reported_stalled() -> bool:
            await sample_subscribers(broker.subscribers, consumer.processed, progress)
            rows = [r for r in progress.snapshot() if r["group"] == group and r["behind"] > 0]
            if rows:
                labels = (group, topic_name, str(rows[0]["partition"]))
                values.append(
                    (
                        OFFSET.labels(*labels)._value.get(),
                        END_OFFSET.labels(*labels)._value.get(),
                        STALLED.labels(*labels)._value.get(),
                    )
                )
            return bool(rows) and all(r["stalled"] for r in rows)

        await eventually(reported_stalled, within=20, interval=0.5)
        row = next(r for r in progress.snapshot() if r["group"] == group and r["behind"] > 0)
        assert row["offset"] == 1  # the first message done, the second never returns
        assert row["end_offset"] > 2  # it saw the partition grow past what it fetched
    finally:
        never.set()
        await broker.stop()
        await producer.stop()

    # The values the metrics showed, as a Prometheus series of one sample a minute
    # (promtool notation: "a b c" then the last repeated), against the real rule.
    offset, end, stalled = values[-1]
    first_offset, first_end, _ = values[0]
    labels = f'{{group="{group}",topic="{topic_name}",partition="{row["partition"]}"}}'
    series = {
        f"router_consumer_offset{labels}": f"{first_offset:g} {offset:g}x20",
        f"router_consumer_end_offset{labels}": f"{first_end:g} {end:g}x20",
        f"router_consumer_stalled{labels}": f"0 {stalled:g}x20",
    }
    assert stalled == 1
    fired = alerts_fired(series, at_minutes=20)
    assert ("ConsumerStalled", group, topic_name, str(row["partition"])) in fired

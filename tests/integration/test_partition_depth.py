"""The local broker does not stall a consumer as a partition grows (issue 22).

Tansu 0.6 on S3 lists every batch object of a partition on each fetch; at about
2,000 single-message batches a consumer at the end with the case path's fetch
wait never saw a new message again (docs/performance.md, "The local broker's
partition depth"). The stack's reaper (deploy/local/reaper.py, started with the
broker by infra.py) deletes what every group has committed past. Here, on the
real broker of the test stack: a partition is filled past that depth with
single-message batches, the project's consumer (shared/consumer.py) reads them
all and commits, the reaper shrinks the partition, and a new event reaches the
caught-up consumer within its normal latency."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker

from deploy.local import reaper
from shared.consumer import EventConsumer
from shared.envelope import EventMeta, ce_headers, new_event_id
from shared.events import Event
from shared.settings import ServiceSettings

DEPTH = 2_200  # single-message batches; the stall was seen from 2,000
NORMAL_LATENCY_S = 2.0  # a hop is about half the 500 ms wait; room for a busy CI machine


def probe_model(topic_name: str) -> type[Event]:
    class DepthProbe(Event):
        topic: ClassVar[str] = topic_name

    return DepthProbe


def message(model: type[Event], i: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    event = model(case_id=f"c-{i}", tenant_id="demo-health")
    headers = ce_headers(
        event_id=new_event_id(), ce_type=model.ce_type(), source="/it", tenant_id="demo-health"
    )
    return event.model_dump_json().encode(), [(k, v.encode()) for k, v in headers.items()]


async def fill(bootstrap: str, model: type[Event], count: int) -> int:
    """`count` batches of one message each: every send awaited before the next (several
    producers at once are slower: they contend on the partition's watermark)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for i in range(count):
            value, headers = message(model, i)
            sent = await producer.send_and_wait(model.topic, value, partition=0, headers=headers)
        return sent.offset + 1  # the true end (ListOffsets reports it a little short)
    finally:
        await producer.stop()


async def commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """What a group that has read everything has committed (as the project's consumer
    commits after each handled message), without reading 2,200 messages here."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


def reaper_config(infra: dict[str, Any], **settings: Any) -> reaper.ReaperConfig:
    return reaper.ReaperConfig(
        s3_url=infra["s3_url"],
        bucket=infra["s3_bucket"],
        region=infra["s3_region"],
        access_key=infra["s3_access_key_id"],
        secret_key=infra["s3_secret_access_key"],
        **settings,
    )


def stored(infra: dict[str, Any], topic: str) -> list[int]:
    """The first offsets of the partition's stored batches, ascending."""
    config = reaper_config(infra)
    return sorted(reaper.batch_bases(reaper.S3(config), config.cluster, topic, 0))


def stored_batches(infra: dict[str, Any], topic: str) -> int:
    return len(stored(infra, topic))


async def one_partition_topics(bootstrap: str, *topics: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics]
        )
    finally:
        await admin.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_caught_up_consumer_gets_a_new_event_on_a_partition_filled_past_the_stall(
    infra: dict[str, Any],
) -> None:
    bootstrap = infra["kafka_bootstrap"]
    topic = f"it.depth.{uuid.uuid4().hex[:8]}"
    model = probe_model(topic)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    began = time.monotonic()
    end = await fill(bootstrap, model, DEPTH)
    filled_in = time.monotonic() - began
    assert stored_batches(infra, topic) >= DEPTH * 0.95  # (almost) one object per message

    settings = ServiceSettings(service_name=f"depth_{uuid.uuid4().hex[:6]}")
    group = f"{settings.consumer_group}.{topic}"  # the group EventConsumer.on joins
    assert end == DEPTH
    await commit(bootstrap, group, topic, end)

    # The reaper (every 5 s) deletes what every group committed past, down to its `keep`.
    deadline = time.monotonic() + 20
    while (left := stored_batches(infra, topic)) > 2 * reaper.ReaperConfig.keep:
        assert time.monotonic() < deadline, f"the reaper left {left} batches"
        await asyncio.sleep(0.5)

    received: dict[str, float] = {}
    arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    broker = KafkaBroker(bootstrap)
    consumer = EventConsumer(broker, settings)

    @consumer.on(model)
    async def handle(event: Event, _meta: EventMeta) -> None:
        received.setdefault(event.case_id, time.monotonic())
        arrived[event.case_id].set()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await broker.start()
    await producer.start()
    try:

        async def send(i: int) -> float:
            value, headers = message(model, i)
            sent_at = time.monotonic()
            await producer.send_and_wait(topic, value, partition=0, headers=headers)
            return sent_at

        async def arrival(i: int, within: float) -> float | None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived[f"c-{i}"].wait(), within)
            return received.get(f"c-{i}")

        # The first event also waits for the group to be joined; the second is timed.
        await send(DEPTH)
        assert await arrival(DEPTH, 20), "the consumer never got the first new event"
        sent_at = await send(DEPTH + 1)
        got = await arrival(DEPTH + 1, 10)
        assert got is not None, "the caught-up consumer never got the new event"
        latency = got - sent_at
        report = {"filled_s": round(filled_in, 1), "left": left, "latency_s": round(latency, 3)}
        print(json.dumps(report))
        assert latency < NORMAL_LATENCY_S
        # Everything it got was new: it started where its group had committed.
        assert set(received) == {f"c-{DEPTH}", f"c-{DEPTH + 1}"}
    finally:
        await producer.stop()
        await broker.stop()


PARTNER_FILL = 130
PARTNER_KEEP = 100


@pytest.mark.asyncio(loop_scope="session")
async def test_a_partner_topic_nobody_reads_is_cut_and_a_late_portal_reads_what_is_left(
    infra: dict[str, Any],
) -> None:
    """No service reads `partner.<tenant>.*`: nothing would bound it but the cap. A
    services' topic nobody has read yet is not cut; a portal that connects after
    the cut reads the newest batches and then the new events."""
    bootstrap = infra["kafka_bootstrap"]
    tag = uuid.uuid4().hex[:8]
    partner, own = f"partner.it{tag}.report.ready", f"it.unread.{tag}"
    await one_partition_topics(bootstrap, partner, own)
    end = await fill(bootstrap, probe_model(partner), PARTNER_FILL)
    await fill(bootstrap, probe_model(own), PARTNER_FILL)
    before = stored(infra, partner)
    own_before = stored_batches(infra, own)
    assert len(before) > PARTNER_KEEP

    config = reaper_config(infra, partner_keep=PARTNER_KEEP, topics=[partner, own])
    report = reaper.reap_once_sync(config, partners=True)
    assert [(p.topic, p.deleted) for p in report.partitions] == [
        (partner, len(before) - PARTNER_KEEP)
    ]
    kept = stored(infra, partner)
    assert kept == before[-PARTNER_KEEP:]  # the newest, in order
    assert stored_batches(infra, own) == own_before  # unread, but the services' own

    portal = AIOKafkaConsumer(
        partner,
        bootstrap_servers=bootstrap,
        group_id=f"partner.it{tag}.portal",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await portal.start()
    await producer.start()
    try:
        value, headers = message(probe_model(partner), PARTNER_FILL)
        await producer.send_and_wait(partner, value, partition=0, headers=headers)
        offsets: list[int] = []
        deadline = time.monotonic() + 30
        while end not in offsets:
            assert time.monotonic() < deadline, f"the portal read only {offsets[-3:]}"
            batch = await portal.getmany(timeout_ms=1000)
            offsets += [m.offset for msgs in batch.values() for m in msgs]
        # From the oldest batch kept to the new event, each once, nothing cut read.
        assert offsets == list(range(kept[0], end + 1))
    finally:
        await producer.stop()
        await portal.stop()

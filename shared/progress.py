"""How far each consumer has read against its partition's growth, and when it stalls.

The broker's own lag (kafka-exporter's ``kafka_consumergroup_lag``, ListOffsets)
is unreliable on the local broker: Tansu reports a partition's end a few hundred
offsets short, and a consumer that Tansu stalls (docs/performance.md, "The local
broker's partition depth") looks idle rather than behind. So every service
reports, per consumer group and partition it is assigned:

* ``router_consumer_offset``: the next offset it will process (the one after the
  last message its handler finished; before any, the group's committed offset);
* ``router_consumer_end_offset``: the partition's end as the consumer saw it: the
  high watermark of its latest fetch response (exact on Tansu) or, if larger,
  what ListOffsets answers (it keeps moving while a stuck handler stops the fetches);
* ``router_consumer_seconds_since_progress``: how long the offset has not
  advanced while there was something to read (0 while caught up);
* ``router_consumer_stalled``: 1 when that lasted ``CONSUMER_STALL_SECONDS``
  (default 120): the consumer stands still while its partition has more.

The Prometheus rule ``ConsumerStalled`` (deploy/k8s/base/prometheus-rules.yaml)
fires on these; ``GET /v1/ops/consumers`` returns the same as JSON for the
operations dashboard (docs/reliability.md, "Consumer progress").

`ConsumerProgress.observe` is pure bookkeeping on an injected clock;
`sample_subscribers` reads the positions from the running aiokafka consumers.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from shared.clock import Clock

LABELS = ["group", "topic", "partition"]
OFFSET = Gauge("router_consumer_offset", "Next offset the consumer will process", LABELS)
END_OFFSET = Gauge(
    "router_consumer_end_offset", "Partition end offset the consumer last saw", LABELS
)
SINCE_PROGRESS = Gauge(
    "router_consumer_seconds_since_progress",
    "Seconds the consumer has not advanced while its partition had more to read",
    LABELS,
)
STALLED = Gauge(
    "router_consumer_stalled",
    "1 if the consumer stood still for CONSUMER_STALL_SECONDS with more to read",
    LABELS,
)

Key = tuple[str, str, int]


@dataclass
class PartitionProgress:
    group: str
    topic: str
    partition: int
    offset: int
    end: int
    progress_at: float  # clock time (s) it last advanced or was caught up

    @property
    def behind(self) -> int:
        return max(0, self.end - self.offset)


class ConsumerProgress:
    """Per (group, topic, partition): the offset, the end seen, and whether it stalls."""

    def __init__(self, clock: Clock, stall_seconds: float) -> None:
        self.clock = clock
        self.stall_seconds = stall_seconds
        self._parts: dict[Key, PartitionProgress] = {}

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def observe(self, group: str, topic: str, partition: int, offset: int, end: int) -> None:
        now = self._now()
        key = (group, topic, partition)
        prev = self._parts.get(key)
        advanced = prev is None or offset > prev.offset or offset >= end
        progress_at = now if advanced or prev is None else prev.progress_at
        part = PartitionProgress(group, topic, partition, offset, max(end, offset), progress_at)
        self._parts[key] = part
        labels = (group, topic, str(partition))
        OFFSET.labels(*labels).set(part.offset)
        END_OFFSET.labels(*labels).set(part.end)
        SINCE_PROGRESS.labels(*labels).set(self.seconds_since_progress(part, now))
        STALLED.labels(*labels).set(1 if self.stalled(part, now) else 0)

    def forget(self, keep: set[Key]) -> None:
        """Drop partitions no longer assigned to this process (another has them now)."""
        for key in set(self._parts) - keep:
            del self._parts[key]
            for gauge in (OFFSET, END_OFFSET, SINCE_PROGRESS, STALLED):
                gauge.remove(key[0], key[1], str(key[2]))

    def seconds_since_progress(self, part: PartitionProgress, now: float) -> float:
        return 0.0 if part.behind == 0 else max(0.0, now - part.progress_at)

    def stalled(self, part: PartitionProgress, now: float | None = None) -> bool:
        now = self._now() if now is None else now
        return part.behind > 0 and self.seconds_since_progress(part, now) >= self.stall_seconds

    def snapshot(self) -> list[dict[str, Any]]:
        now = self._now()
        return [
            {
                "group": p.group,
                "topic": p.topic,
                "partition": p.partition,
                "offset": p.offset,
                "end_offset": p.end,
                "behind": p.behind,
                "seconds_since_progress": round(self.seconds_since_progress(p, now), 1),
                "stalled": self.stalled(p, now),
            }
            for p in sorted(self._parts.values(), key=lambda p: (p.group, p.topic, p.partition))
        ]


async def sample_subscribers(
    subscribers: Any, processed: dict[Key, int], progress: ConsumerProgress
) -> None:
    """One observation of every partition the running subscribers are assigned.

    `processed` is what shared.consumer.EventConsumer recorded: the offset after
    the last message each partition's handler finished."""
    seen: set[Key] = set()
    for sub in subscribers:
        consumer = getattr(sub, "consumer", None)
        group = getattr(sub, "group_id", None)
        if consumer is None or not group:
            continue
        assigned = list(consumer.assignment())
        listed: dict[Any, int] = {}
        if assigned:
            # The fetch's high watermark stops moving when the handler does (nothing
            # more is fetched); ListOffsets still sees the partition grow (short of
            # the true end on Tansu, hence the larger of the two).
            with suppress(TimeoutError, KafkaError):
                listed = await asyncio.wait_for(consumer.end_offsets(assigned), 5.0)
        for tp in assigned:
            key = (group, tp.topic, tp.partition)
            offset = processed.get(key)
            if offset is None:
                offset = await consumer.committed(tp)
            if offset is None:  # a new group: where it fetches from
                with suppress(TimeoutError, KafkaError):
                    offset = await asyncio.wait_for(consumer.position(tp), 2.0)
            ends = [e for e in (consumer.highwater(tp), listed.get(tp)) if e is not None]
            end = max(ends) if ends else None
            if offset is None or end is None:
                continue  # nothing fetched or committed yet: nothing to compare
            progress.observe(group, tp.topic, tp.partition, offset, end)
            seen.add(key)
    progress.forget(seen)

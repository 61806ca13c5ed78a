"""Consuming a topic with the delivery rules of docs/architecture.md ("Delivery semantics").

`EventConsumer.on(Model)` registers a handler ``async (event, meta) -> None``
for the model's topic. Around it:

* the offset is committed (manual ack) only after the handler returned, so a
  crash mid-handler means a redelivery, which the handler's idempotency guard
  (shared.store.apply_once) skips. Commits are gathered (`OffsetCommitter`):
  one commit per partition every `COMMIT_INTERVAL_SECONDS`, not one broker
  round trip per message in the handler's path;
* a message that can never be processed — not a CloudEvent, an unknown
  ``ce_type``/version, a body that fails the model, a tenant mismatch, a
  `PermanentError` from the handler — goes to ``<topic>.dlq`` with the reason,
  and the partition moves on;
* a transient failure (`shared.errors.is_retryable`) is retried with capped
  exponential backoff and never skips the message;
* an unexpected exception (a bug) is retried a few times, then dead-lettered,
  so one bad message cannot wedge a partition in a crash loop.

Reasons never quote the payload: pydantic errors are reduced to location and
message, without the input value, because the input may be PHI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, ValidationError

from shared.envelope import EventMeta
from shared.errors import PermanentError, UnknownEventType, is_retryable
from shared.events import dead_letter_topic
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[M, EventMeta], Awaitable[None]]

BUG_ATTEMPTS = 3
MAX_BACKOFF_SECONDS = 10.0
COMMIT_INTERVAL_SECONDS = 0.2
# A dead letter carries the original bytes if they fit below the broker's limit
# (as the relay's MAX_EVENT_BYTES), else only where the original is.
MAX_DEAD_LETTER_BYTES = 900_000


def validation_reason(exc: ValidationError) -> str:
    """A PHI-free summary of a validation error: where and what, never the value."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    ]
    return "schema validation failed: " + "; ".join(parts[:20])


def decode_event(model: type[M], meta: EventMeta, body: bytes) -> M:
    """Check the type/version header and validate the body, or raise PermanentError."""
    expected = model.ce_type()  # type: ignore[attr-defined]
    if meta.ce_type != expected:
        raise UnknownEventType(f"ce_type {meta.ce_type!r} is not {expected!r}")
    try:
        event = model.model_validate_json(body)
    except ValidationError as exc:
        raise PermanentError(validation_reason(exc)) from None
    tenant = getattr(event, "tenant_id", None)
    if tenant != meta.tenant_id:
        raise PermanentError("ce_tenantid header does not match the body's tenant_id")
    return event


async def raw_body(message: Any) -> bytes:
    """Skip faststream's JSON decoding: undecodable bytes must reach `_process`
    (and the dead-letter topic), not fail before the handler and be skipped."""
    return bytes(message.body)


class OffsetCommitter:
    """Commits processed offsets in the background, a few times a second.

    A committed offset never passes a message that was not processed: each
    partition is consumed one message at a time, and only the offset after a
    message whose handler returned is recorded. What a crash (or a rebalance)
    leaves uncommitted is delivered again and skipped by the handlers'
    idempotency guard, exactly as with a commit per message; what is saved is a
    broker round trip (a storage write, for Tansu) in every message's path."""

    def __init__(self, interval: float = COMMIT_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._pending: dict[int, tuple[AIOKafkaConsumer, dict[TopicPartition, int]]] = {}
        self._timer: asyncio.Task[None] | None = None

    def processed(self, message: Any) -> None:
        """`message` (a faststream KafkaMessage) was handled: its offset may be committed."""
        raw = message.raw_message
        _, offsets = self._pending.setdefault(id(message.consumer), (message.consumer, {}))
        offsets[TopicPartition(raw.topic, raw.partition)] = raw.offset + 1
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for consumer, offsets in pending.values():
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # Revoked in a rebalance, or the broker is away: the new owner (or
                # this one) gets these messages again and skips them as duplicates.
                log.warning("offset commit failed (%s); messages will be redelivered", exc)


class EventConsumer:
    """Registers topic handlers on a broker with dead-lettering and retries."""

    def __init__(
        self,
        broker: KafkaBroker,
        settings: ServiceSettings,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.broker = broker
        self.settings = settings
        # Waits between retries go through `sleep` so that a test can record the
        # backoff without patching asyncio for the whole event loop.
        self._sleep = sleep
        self.dead_lettered = 0
        self.committer = OffsetCommitter()
        # (group, topic, partition) -> the offset after the last message handled:
        # what shared.progress reports as the consumer's position.
        self.processed: dict[tuple[str, str, int], int] = {}

    def on(self, model: type[M], *, follower: bool = False) -> Callable[[Handler[M]], Handler[M]]:
        """Register the handler of `model`'s topic. A `follower` records what happened
        elsewhere (a status, a notification) and is not on a case's path from
        submission to report: it fetches with the longer wait."""
        topic: str = model.topic  # type: ignore[attr-defined]
        wait = (
            self.settings.kafka_follower_fetch_max_wait_ms
            if follower
            else self.settings.kafka_fetch_max_wait_ms
        )

        group = f"{self.settings.consumer_group}.{topic}"

        def register(handler: Handler[M]) -> Handler[M]:
            async def consume(message: KafkaMessage) -> None:
                await self._process(model, handler, message)
                self.committer.processed(message)
                raw: Any = message.raw_message  # one ConsumerRecord (not a batch)
                self.processed[(group, raw.topic, raw.partition)] = raw.offset + 1

            consume.__name__ = f"on_{topic.replace('.', '_')}"
            self.broker.subscriber(
                topic,
                group_id=group,
                auto_offset_reset="earliest",
                ack_policy=AckPolicy.MANUAL,
                decoder=raw_body,
                session_timeout_ms=self.settings.kafka_session_timeout_ms,
                heartbeat_interval_ms=self.settings.kafka_heartbeat_interval_ms,
                fetch_max_wait_ms=wait,
                title=f"{self.settings.service_name}:{topic}",
                description=(model.__doc__ or "").strip(),
            )(consume)
            return handler

        return register

    async def _process(self, model: type[M], handler: Handler[M], message: Any) -> None:
        try:
            meta = EventMeta.from_headers(dict(message.headers))
            event = decode_event(model, meta, message.body)
        except PermanentError as exc:
            await self.dead_letter(message, exc.detail)
            return
        await self._call_with_retries(handler, event, meta, message)

    async def _call_with_retries(
        self, handler: Handler[M], event: M, meta: EventMeta, message: Any
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await handler(event, meta)
                return
            except PermanentError as exc:
                await self.dead_letter(message, exc.detail)
                return
            except Exception as exc:
                if not is_retryable(exc) and attempt >= BUG_ATTEMPTS:
                    await self.dead_letter(message, f"handler failed: {type(exc).__name__}")
                    return
                delay = min(MAX_BACKOFF_SECONDS, 0.2 * 2 ** min(attempt, 10))
                log.warning(
                    "handler %s attempt %d failed (%s); retrying in %.1fs",
                    handler.__name__,
                    attempt,
                    type(exc).__name__,
                    delay,
                    exc_info=not is_retryable(exc),
                )
                await self._sleep(delay)

    async def dead_letter(self, message: Any, reason: str) -> None:
        """Publish the original bytes to `<topic>.dlq` with why it could not be processed."""
        raw = message.raw_message
        headers = {
            k: v.decode() if isinstance(v, bytes) else str(v) for k, v in message.headers.items()
        }
        headers.update(
            {
                "dlq_reason": reason[:1000],
                "dlq_source_topic": raw.topic,
                "dlq_partition": str(raw.partition),
                "dlq_offset": str(raw.offset),
                "dlq_service": self.settings.service_name,
            }
        )
        value = raw.value or b""
        if len(value) + sum(len(k) + len(v) for k, v in headers.items()) > MAX_DEAD_LETTER_BYTES:
            # Too large to publish again: the dead letter names where the original
            # still is (topic, partition, offset) and its size, without the bytes.
            headers["dlq_payload_omitted_bytes"] = str(len(value))
            headers = {k: v[:1000] for k, v in headers.items()}
            value = b""
        await self.broker.publish(
            value, topic=dead_letter_topic(raw.topic), key=raw.key, headers=headers
        )
        self.dead_lettered += 1
        log.warning(
            "dead-lettered %s[%s]@%s: %s", raw.topic, raw.partition, raw.offset, reason[:300]
        )

"""Store helpers every service uses on its own database.

`apply_once` is the idempotency guard and the outbox (docs/architecture.md) in one
single-document write: the state change, the id of the event being applied and
the events to emit land atomically, so a redelivered message is skipped and an
emitted event is never lost. `OutboxRelay` publishes pending outbox entries and
removes them once the broker has them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from prometheus_client import Counter
from pymongo import AsyncMongoClient, UpdateOne, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.aio import sleep_until_woken
from shared.clock import SYSTEM_CLOCK, Clock
from shared.envelope import OutboxEntry, ce_headers
from shared.telemetry import attach_traceparent, detach, quiet

log = logging.getLogger(__name__)

# How many applied event ids a document remembers; redeliveries come soon after
# the original, so a bounded window is enough and keeps documents small.
APPLIED_WINDOW = 200
# Outbox documents a relay pass reads, publishes and clears together.
FLUSH_BATCH = 500
Doc = dict[str, Any]
# Counts what the idempotency guard saw again (a message redelivered after a
# crash, an outbox entry republished); the fault tier reports it.
REDELIVERIES_SKIPPED = Counter(
    "router_redeliveries_skipped_total", "Events whose effect was already applied, skipped"
)


# The largest event the relay hands to the producer: below the producer's request
# limit and the broker's default `message.max.bytes` (1 MiB), with room for the
# CloudEvents headers. The contract's field and list bounds keep every event far
# below it (shared/events.py); an entry over it is set aside, never retried.
MAX_EVENT_BYTES = 900_000
OUTBOX_DEAD_LETTERS = Counter(
    "router_outbox_dead_letters_total",
    "Outbox entries that could never be published and were set aside (alert on any)",
    ["topic"],
)


def connect(uri: str, database: str) -> tuple[AsyncMongoClient[Doc], AsyncDatabase[Doc]]:
    """A client whose writes are acknowledged by a majority and journaled:
    a SIGKILLed server must not forget a write we already acted upon."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        uri, w="majority", journal=True, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    db = client.get_database(database, write_concern=WriteConcern(w="majority", j=True))
    return client, db


# ---------------------------------------------------------------- the outbox API
# Every store writes its events through these three functions and nothing else
# touches the `outbox` / `has_outbox` / `applied` fields (docs/architecture.md,
# "Delivery semantics"): the state change, the id of the event being applied and
# the events to emit land in one single-document write.

OUTBOX_FIELDS = ("outbox", "has_outbox", "applied")
# A projection that leaves the outbox bookkeeping out of what a store returns.
WITHOUT_OUTBOX: Doc = {"outbox": 0, "has_outbox": 0, "applied": 0}


def with_outbox(update: Doc, outbox: Sequence[OutboxEntry], event_id: str | None = None) -> Doc:
    """`update` plus the outbox push and (if given) the applied-event record."""
    merged = {op: dict(fields) for op, fields in update.items()}
    push = merged.setdefault("$push", {})
    if event_id:
        push["applied"] = {"$each": [event_id], "$slice": -APPLIED_WINDOW}
    if outbox:
        push["outbox"] = {"$each": [e.model_dump(mode="python") for e in outbox]}
        merged.setdefault("$set", {})["has_outbox"] = True
    if not push:
        del merged["$push"]
    return merged


def new_with_outbox(doc: Doc, outbox: Sequence[OutboxEntry], event_id: str | None = None) -> Doc:
    """A new document (with `_id`) carrying its first events."""
    return {
        **doc,
        "applied": [event_id] if event_id else [],
        "outbox": [e.model_dump(mode="python") for e in outbox],
        "has_outbox": bool(outbox),
    }


async def insert_with_outbox(
    coll: AsyncCollection[Doc],
    doc: Doc,
    outbox: Sequence[OutboxEntry] = (),
    event_id: str | None = None,
) -> bool:
    """Insert `doc` with its first events; False if a document with its `_id` exists
    (a redelivered event, or a repeated request: the first one won)."""
    try:
        await coll.insert_one(new_with_outbox(doc, outbox, event_id))
    except DuplicateKeyError:
        REDELIVERIES_SKIPPED.inc()
        return False
    return True


async def update_with_outbox(
    coll: AsyncCollection[Doc],
    query: Doc,
    update: Doc,
    outbox: Sequence[OutboxEntry] = (),
    event_id: str | None = None,
) -> bool:
    """A guarded update: apply `update` and its events to the document matching
    `query` (which names its `_id`, and may add a version or state condition),
    unless `event_id` was already applied. False when nothing matched."""
    guarded = dict(query)
    if event_id:
        guarded["applied"] = {"$ne": event_id}
    result = await coll.update_one(guarded, with_outbox(update, outbox, event_id))
    return bool(result.matched_count)


async def apply_once(
    coll: AsyncCollection[Doc],
    doc_id: str,
    event_id: str | None,
    update: Doc,
    outbox: Sequence[OutboxEntry] = (),
    *,
    upsert: bool = True,
    where: Doc | None = None,
) -> bool:
    """Apply `update` to document `doc_id` unless `event_id` was already applied,
    creating the document if needed (upsert).

    Returns False when the event was a redelivery (or, with upsert=False, the
    document does not exist or does not match the extra condition `where`).
    """
    query: Doc = {**(where or {}), "_id": doc_id}
    if event_id:
        query["applied"] = {"$ne": event_id}
    try:
        result = await coll.update_one(query, with_outbox(update, outbox, event_id), upsert=upsert)
    except DuplicateKeyError:
        # The document exists and already holds event_id: the upsert's insert collided.
        REDELIVERIES_SKIPPED.inc()
        return False
    return bool(result.matched_count or result.upserted_id is not None)


# Conditional writes are `update_one` (plus a `find_one` where the document is
# needed), never `find_one_and_update`: SecantusDB runs findAndModify as a scan of
# the whole collection even for an `_id` filter (measured: 95 ms per call at 5,000
# documents, against 5 ms for update_one), which made every write slower with
# every case ever handled. On MongoDB the two forms cost the same.


async def update_if(coll: AsyncCollection[Doc], query: Doc, update: Doc) -> bool:
    """Apply `update` to the document matching `query` (which names its `_id`), if any."""
    result = await coll.update_one(query, update)
    return bool(result.matched_count)


async def claim_one(
    coll: AsyncCollection[Doc], query: Doc, sort: list[tuple[str, int]], update: Doc
) -> Doc | None:
    """Take the first document matching `query` by a conditional write of `update`.

    Returns the document as it was before the claim, or None when none is free.
    Two workers may read the same candidate; the write's condition (the same
    `query`, on that `_id`) lets exactly one of them have it, and the other
    looks again."""
    for _ in range(CLAIM_TRIES):
        doc = await coll.find_one(query, sort=sort)
        if doc is None:
            return None
        if await update_if(coll, {**query, "_id": doc["_id"]}, update):
            return doc
    return None


# A worker that lost this many races in a row lets the others work and looks later.
CLAIM_TRIES = 5


class OutboxRelay:
    """Publishes outbox entries from the given collections, in order per document.

    The loop (`run`) is pipelined: a pass hands what it found to the producer and
    goes on at once, while a task of its own awaits the broker's confirms and
    removes the confirmed entries. An entry written while earlier ones are still
    being confirmed is therefore published within one database read, instead of
    waiting for the whole previous pass (confirms and removal) to end; under load
    that wait was most of a hop's latency (measured: up to a second per hop at
    saturation). A document whose entries are still unconfirmed is left out of
    the next passes until they are confirmed, so no entry is sent ahead of an
    earlier one of its document (as before: a failed send is retried with the
    document's whole outbox, and consumers de-duplicate); and a pass that read a
    document just before its entries were confirmed and removed does not send
    them again (`_cleared`)."""

    def __init__(
        self,
        broker: Any,
        source: str,
        collections: list[AsyncCollection[Doc]],
        sweep_seconds: float = 2.0,
        dead_letters: AsyncCollection[Doc] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._broker = broker
        self._dead_letters = dead_letters
        self._clock = clock
        self._source = source
        # Shared with the owner, which appends the collections it declares later.
        self._collections = collections
        self._sweep = sweep_seconds
        self._wake = asyncio.Event()
        # (collection, _id) of documents whose sent entries are not yet confirmed.
        self._in_flight: set[tuple[str, Any]] = set()
        self._confirming: set[asyncio.Task[int]] = set()
        # Documents a pass skipped because they were in flight: they have news.
        self._waiting: set[tuple[str, Any]] = set()
        # Ids of entries confirmed and removed lately. A pass whose read began before
        # a removal sees them still there: they must not be sent again.
        self._cleared: OrderedDict[str, None] = OrderedDict()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Loop forever: publish on wake-up and every sweep interval (crash recovery)."""
        try:
            while True:
                try:
                    await self._pass(confirm=self._confirm_later)
                except Exception as exc:  # broker or database down: try again next sweep
                    log.warning("outbox flush failed: %s", type(exc).__name__)
                await sleep_until_woken(self._wake, self._sweep)
        finally:
            # Stopping: let the sends already made be confirmed and cleared, so a
            # restart does not publish them again (it would be harmless, not free).
            if self._confirming:
                await asyncio.wait(self._confirming, timeout=CONFIRM_ON_STOP_SECONDS)

    async def flush(self) -> int:
        """Publish everything pending now and wait for the confirms; returns the
        number of events the broker confirmed."""
        return await self._pass(confirm=self._confirm)

    async def _pass(
        self, confirm: Callable[[AsyncCollection[Doc], list[Sent]], Awaitable[int]]
    ) -> int:
        done = 0
        for coll in self._collections:
            while True:
                with quiet():
                    pending = await coll.find({"has_outbox": True}, {"outbox": 1}).to_list(
                        FLUSH_BATCH
                    )
                sent = await self._send(coll, pending)
                done += await confirm(coll, sent)
                if len(pending) < FLUSH_BATCH or not sent:
                    break
        return done

    async def _send(self, coll: AsyncCollection[Doc], docs: list[Doc]) -> list[Sent]:
        """Hand every entry of `docs` to the producer without waiting for confirms
        (one key per document, so the producer keeps a document's entries in order
        on its partition); documents with entries still in flight wait their turn."""
        sent: list[Sent] = []
        for doc in docs:
            key = (coll.name, doc["_id"])
            if key in self._in_flight:
                self._waiting.add(key)  # its confirm wakes the relay for another pass
                continue
            entries = [e for e in _entries(doc) if e.id not in self._cleared]
            if doc.get("outbox") and not entries:
                continue  # read before its entries were confirmed and removed
            self._in_flight.add(key)
            ids: list[str] = []
            futures: list[Any] = []
            try:
                for entry in entries:
                    future = await self._hand_over(coll, doc["_id"], entry)
                    if future is not None:
                        ids.append(entry.id)
                        futures.append(future)
            except BaseException:
                self._in_flight.discard(key)
                raise
            sent.append(Sent(doc["_id"], ids, futures))
        return sent

    async def _hand_over(self, coll: AsyncCollection[Doc], doc_id: Any, entry: OutboxEntry) -> Any:
        """The producer's delivery future for `entry`, or None when the entry can
        never be published and was set aside. One bad event must not hold back its
        document's later events, nor (by failing every pass) every other document's;
        a transient failure (broker away) still raises and ends the pass."""
        size = len(json.dumps(entry.body, ensure_ascii=False).encode())
        if size > MAX_EVENT_BYTES:
            reason = f"event of {size} bytes exceeds the limit of {MAX_EVENT_BYTES}"
        else:
            try:
                return await self.publish(entry, confirm=False)
            except MessageSizeTooLargeError:
                reason = "the producer refused the event's size"
            except KafkaError as exc:
                if getattr(exc, "retriable", False) or not _is_entry_error(exc):
                    raise
                reason = f"the producer refused the event: {type(exc).__name__}"
            except (TypeError, ValueError) as exc:
                reason = f"the event cannot be serialised: {type(exc).__name__}"
        await self.set_aside(coll, doc_id, entry, reason)
        return None

    async def set_aside(
        self, coll: AsyncCollection[Doc], doc_id: Any, entry: OutboxEntry, reason: str
    ) -> None:
        """Move an unpublishable entry out of the outbox into the service's
        `outbox_dead_letters` collection (kept whole, so it can be republished once
        the cause is fixed), count it and log it by its ids only (no PHI)."""
        if self._dead_letters is None:
            raise RuntimeError(f"unpublishable outbox entry {entry.id}: {reason}")
        record = {
            "_id": entry.id,
            "collection": coll.name,
            "doc_id": doc_id,
            "topic": entry.topic,
            "ce_type": entry.ce_type,
            "tenant_id": entry.tenant_id,
            "reason": reason,
            "set_aside_at": self._clock.now(),
            "entry": entry.model_dump(mode="python"),
        }
        with suppress(DuplicateKeyError):  # set aside by an earlier pass that then failed
            await self._dead_letters.insert_one(record)
        await coll.bulk_write(_removal(Sent(doc_id, [entry.id], [])), ordered=True)
        OUTBOX_DEAD_LETTERS.labels(entry.topic).inc()
        log.error(
            "outbox entry %s (%s of %s/%s) set aside: %s",
            entry.id,
            entry.topic,
            coll.name,
            doc_id,
            reason,
        )

    async def _confirm_later(self, coll: AsyncCollection[Doc], sent: list[Sent]) -> int:
        if sent:
            task = asyncio.create_task(self._confirm(coll, sent), name="outbox-confirm")
            self._confirming.add(task)
            task.add_done_callback(self._confirmed)
        return len(sent)

    def _confirmed(self, task: asyncio.Task[int]) -> None:
        self._confirming.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("outbox confirm failed: %s", type(task.exception()).__name__)

    async def _confirm(self, coll: AsyncCollection[Doc], sent: list[Sent]) -> int:
        """Await the confirms and remove, in one bulk write, the entries of each
        document that were all acknowledged; the others are kept whole and
        published again by a later pass (consumers de-duplicate)."""
        try:
            acknowledged = []
            for one in sent:
                results = await asyncio.gather(*one.futures, return_exceptions=True)
                if not any(isinstance(r, BaseException) for r in results):
                    acknowledged.append(one)
                    continue
                # The broker refused a record itself (too large for its limit): that
                # entry is set aside; the others are sent again by a later pass.
                for entry_id, result in zip(one.ids, results, strict=True):
                    if _refused_for_good(result):
                        await self._set_aside_by_id(coll, one.doc_id, entry_id, result)
            if acknowledged:
                await coll.bulk_write(
                    [op for one in acknowledged for op in _removal(one)], ordered=True
                )
                self._remember_cleared([i for one in acknowledged for i in one.ids])
            return sum(len(one.ids) for one in acknowledged)
        finally:
            keys = {(coll.name, one.doc_id) for one in sent}
            self._in_flight -= keys
            if keys & self._waiting:  # entries written meanwhile were skipped: look again
                self._waiting -= keys
                self._wake.set()

    async def _set_aside_by_id(
        self, coll: AsyncCollection[Doc], doc_id: Any, entry_id: str, error: BaseException
    ) -> None:
        doc = await coll.find_one({"_id": doc_id}, {"outbox": 1})
        for entry in _entries(doc or {}):
            if entry.id == entry_id:
                reason = f"the broker refused the event: {type(error).__name__}"
                await self.set_aside(coll, doc_id, entry, reason)

    def _remember_cleared(self, ids: list[str]) -> None:
        for entry_id in ids:
            self._cleared[entry_id] = None
        while len(self._cleared) > CLEARED_MEMORY:
            self._cleared.popitem(last=False)

    async def publish(self, entry: OutboxEntry, *, confirm: bool = True) -> Any:
        """Publish one entry under the trace it was emitted in. With confirm=False
        it returns the broker's delivery future instead of awaiting it."""
        token = attach_traceparent(entry.traceparent)
        try:
            return await self._broker.publish(
                entry.body,
                topic=entry.topic,
                key=entry.key.encode(),
                headers=ce_headers(
                    event_id=entry.id,
                    ce_type=entry.ce_type,
                    source=self._source,
                    tenant_id=entry.tenant_id,
                    time=entry.created_at,
                ),
                no_confirm=not confirm,
            )
        finally:
            detach(token)


# Confirmed entry ids a relay remembers: far more than can be confirmed during
# one read of the outbox, and a bounded memory.
CLEARED_MEMORY = 10_000
# How long a stopping relay waits for the broker to confirm what it already sent.
CONFIRM_ON_STOP_SECONDS = 5.0


@dataclass(frozen=True)
class Sent:
    """One document's entries handed to the producer, and their delivery futures."""

    doc_id: Any
    ids: list[str]
    futures: list[Any]


def _refused_for_good(result: Any) -> bool:
    return isinstance(result, MessageSizeTooLargeError) or (
        isinstance(result, KafkaError) and _is_entry_error(result)
    )


def _removal(sent: Sent) -> list[UpdateOne]:
    return [
        UpdateOne({"_id": sent.doc_id}, {"$pull": {"outbox": {"id": {"$in": sent.ids}}}}),
        UpdateOne({"_id": sent.doc_id, "outbox": {"$size": 0}}, {"$set": {"has_outbox": False}}),
    ]


def _is_entry_error(exc: KafkaError) -> bool:
    """Errors about the record itself, not about the broker or the connection."""
    from aiokafka.errors import InvalidTopicError, RecordListTooLargeError

    return isinstance(exc, InvalidTopicError | RecordListTooLargeError)


def _entries(doc: Doc) -> list[OutboxEntry]:
    return [OutboxEntry.model_validate(e) for e in doc.get("outbox", [])]

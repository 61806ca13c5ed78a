"""notify's own collections: `subscriptions` (a tenant's destinations: partner
webhooks, the treating clinician's and the patient portal's channels, with
their secrets) and `deliveries` (one per event and subscriber, with every
attempt). Every read and change a tenant makes is scoped by its tenant_id.
Documents go in and out as the typed models of services/notify/models.py;
every time is the caller's `now` (its clock)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from services.notify.domain import Breaker
from services.notify.models import Attempt, Delivery, Subscription
from shared.envelope import OutboxEntry
from shared.errors import Conflict, NotFound
from shared.store import (
    WITHOUT_OUTBOX,
    Doc,
    claim_one,
    insert_with_outbox,
    update_if,
    update_with_outbox,
)

# A listing leaves out the payload (fetched one by one) and the bookkeeping.
LISTING = {**WITHOUT_OUTBOX, "payload": 0, "traceparent": 0, "lease_until": 0}
LIVE = {"state": {"$ne": "deleted"}}


class NotifyStore:
    def __init__(
        self,
        subscriptions: AsyncCollection[Doc],
        deliveries: AsyncCollection[Doc],
        clinicians: AsyncCollection[Doc] | None = None,
    ) -> None:
        self.subscriptions = subscriptions
        self.deliveries = deliveries
        # case_id -> the treating clinician's address, from case.accepted.
        self.clinicians = (
            clinicians if clinicians is not None else deliveries.database["clinicians"]
        )

    async def create_indexes(self) -> None:
        await self.subscriptions.create_index([("tenant_id", 1), ("active", 1)])
        await self.deliveries.create_index([("state", 1), ("shard", 1), ("next_attempt_at", 1)])
        await self.deliveries.create_index([("tenant_id", 1), ("subscription_id", 1)])
        await self.deliveries.create_index([("subscription_id", 1), ("sequence", 1)])
        await self.deliveries.create_index([("state", 1), ("alert", 1)])

    # ------------------------------------------------------------ clinicians

    async def remember_clinician(
        self, tenant_id: str, case_id: str, email: str, now: datetime
    ) -> None:
        """The treating clinician of a case (idempotent: a redelivered event rewrites it)."""
        await self.clinicians.update_one(
            {"_id": case_id},
            {"$set": {"tenant_id": tenant_id, "email": email, "updated_at": now}},
            upsert=True,
        )

    async def clinician_of(self, tenant_id: str, case_id: str) -> str:
        doc = await self.clinicians.find_one({"_id": case_id, "tenant_id": tenant_id})
        return str(doc["email"]) if doc else ""

    # ------------------------------------------------------------ subscriptions

    async def add_subscription(self, sub: Subscription) -> None:
        await self.subscriptions.insert_one(sub.doc())

    async def active_subscriptions(self, tenant_id: str, event_type: str) -> list[Subscription]:
        query = {"tenant_id": tenant_id, "active": True, "event_types": event_type, **LIVE}
        return [Subscription.load(d) for d in await self.subscriptions.find(query).to_list()]

    async def subscriptions_of(self, tenant_id: str) -> list[Subscription]:
        docs = await self.subscriptions.find({"tenant_id": tenant_id, **LIVE}).to_list(1000)
        return [Subscription.load(d) for d in docs]

    async def subscription(self, tenant_id: str, sub_id: str) -> Subscription:
        doc = await self.subscriptions.find_one({"_id": sub_id, "tenant_id": tenant_id, **LIVE})
        if doc is None:
            raise NotFound("no such subscription")
        return Subscription.load(doc)

    async def subscription_by_id(self, sub_id: str) -> Subscription | None:
        """For the dispatcher: a delivery's subscriber, deleted ones included."""
        doc = await self.subscriptions.find_one({"_id": sub_id})
        return None if doc is None else Subscription.load(doc)

    async def update_subscription(
        self, tenant_id: str, sub_id: str, fields: Doc, now: datetime
    ) -> Subscription:
        query = {"_id": sub_id, "tenant_id": tenant_id, **LIVE}
        if not await update_if(self.subscriptions, query, {"$set": {**fields, "updated_at": now}}):
            raise NotFound("no such subscription")
        return await self.subscription(tenant_id, sub_id)

    async def delete_subscription(self, tenant_id: str, sub_id: str, now: datetime) -> None:
        """A soft delete: kept (for audit) as `deleted`, never delivered to again."""
        update = {"$set": {"state": "deleted", "active": False, "deleted_at": now}}
        query = {"_id": sub_id, "tenant_id": tenant_id, **LIVE}
        if not await update_if(self.subscriptions, query, update):
            raise NotFound("no such subscription")

    async def allocate_sequence(self, sub_id: str, delivery_id: str) -> int:
        """The next sequence number of a subscription, by one atomic `$inc`, so
        two fan-outs never get the same one and numbers only grow. The delivery
        that got it is recorded in the same write: a fan-out retried after a
        crash between this and the delivery's insert gets the same number back
        instead of leaving a gap."""
        doc = await self.subscriptions.find_one_and_update(
            {"_id": sub_id, "last_sequenced": {"$ne": delivery_id}},
            {"$inc": {"sequence": 1}, "$set": {"last_sequenced": delivery_id}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # this delivery was the last one numbered
            doc = await self.subscriptions.find_one({"_id": sub_id})
            if doc is None:
                raise NotFound("no such subscription")
        return int(doc["sequence"])

    async def set_breaker(self, sub_id: str, breaker: Breaker, now: datetime) -> None:
        await self.subscriptions.update_one(
            {"_id": sub_id}, {"$set": {"breaker": breaker.model_dump(), "updated_at": now}}
        )

    async def begin_probe(self, sub_id: str, now: datetime, lease_until: datetime) -> bool:
        """Take the one probe of an open breaker (half-open); False if another
        worker has it. A probe whose worker died is taken again after its lease."""
        return await update_if(
            self.subscriptions,
            {
                "_id": sub_id,
                "breaker.state": {"$in": ["open", "half_open"]},
                "breaker.retry_at": {"$lte": now},
            },
            {"$set": {"breaker.state": "half_open", "breaker.retry_at": lease_until}},
        )

    async def first_pending_sequence(self, sub_id: str) -> int | None:
        """The lowest sequence number among the subscription's pending deliveries."""
        doc = await self.deliveries.find_one(
            {"subscription_id": sub_id, "state": "pending", "sequence": {"$ne": None}},
            {"sequence": 1},
            sort=[("sequence", 1)],
        )
        return None if doc is None else int(doc["sequence"])

    async def bring_forward(self, sub_id: str, sequence: int, now: datetime) -> None:
        """Make the subscription's delivery `sequence` due now (the breaker wants a
        probe and only the oldest pending delivery may be it)."""
        await self.deliveries.update_one(
            {
                "subscription_id": sub_id,
                "state": "pending",
                "sequence": sequence,
                "next_attempt_at": {"$gt": now},
            },
            {"$set": {"next_attempt_at": now, "updated_at": now}},
        )

    async def hold_pending(
        self, sub_id: str, until: datetime, now: datetime, except_id: str = ""
    ) -> None:
        """While an endpoint's breaker is open, none of its deliveries is due
        before the probe: they cost the dispatcher nothing meanwhile."""
        await self.deliveries.update_many(
            {
                "subscription_id": sub_id,
                "state": "pending",
                "next_attempt_at": {"$lt": until},
                "_id": {"$ne": except_id},
            },
            {"$set": {"next_attempt_at": until, "updated_at": now}},
        )

    async def release_pending(self, sub_id: str, now: datetime) -> None:
        """The breaker closed: every held delivery is due now (sent in sequence order)."""
        await self.deliveries.update_many(
            {"subscription_id": sub_id, "state": "pending"},
            {"$set": {"next_attempt_at": now, "updated_at": now}},
        )

    async def disable_subscription(self, sub_id: str, reason: str, now: datetime) -> None:
        """The endpoint said it is gone (410): stop sending, say why (visible in the API)."""
        await self.subscriptions.update_one(
            {"_id": sub_id},
            {"$set": {"active": False, "disabled_reason": reason, "disabled_at": now}},
        )

    # ------------------------------------------------------------ deliveries

    async def create_delivery(self, delivery: Delivery) -> bool:
        """False if it exists already (a redelivered event)."""
        return await insert_with_outbox(self.deliveries, delivery.doc())

    async def delivery_exists(self, delivery_id: str) -> bool:
        return await self.deliveries.count_documents({"_id": delivery_id}, limit=1) > 0

    async def list_deliveries(self, tenant_id: str, filters: Doc, limit: int) -> list[Delivery]:
        query = {"tenant_id": tenant_id, **filters}
        cursor = self.deliveries.find(query, LISTING).sort("created_at", -1).limit(limit)
        return [Delivery.load(d) for d in await cursor.to_list()]

    async def delivery(self, tenant_id: str, delivery_id: str) -> Delivery:
        doc = await self.deliveries.find_one(
            {"_id": delivery_id, "tenant_id": tenant_id}, WITHOUT_OUTBOX
        )
        if doc is None:
            raise NotFound("no such delivery")
        return Delivery.load(doc)

    async def claim_due(
        self, lease_seconds: float, now: datetime, shard: int | None = None
    ) -> Delivery | None:
        """Take one due delivery for `lease_seconds`, so two dispatchers never send
        it at once. `in_flight` marks the send as started; the delivery returned
        is the one from before the claim, so a set `in_flight` there means an
        earlier dispatcher died between sending and recording."""
        query: Doc = {
            "state": "pending",
            "next_attempt_at": {"$lte": now},
            "lease_until": {"$lte": now},
        }
        if shard is not None:  # shard 0 also takes deliveries stored before shards existed
            query["shard"] = {"$in": [0, None]} if shard == 0 else shard
        doc = await claim_one(
            self.deliveries,
            query,
            [("next_attempt_at", 1), ("sequence", 1)],
            {"$set": {"lease_until": now + timedelta(seconds=lease_seconds), "in_flight": now}},
        )
        return None if doc is None else Delivery.load(doc)

    async def record_attempt(
        self,
        delivery_id: str,
        attempts: list[Attempt],
        state: str,
        next_at: datetime | None,
        outbox: Sequence[OutboxEntry],
        now: datetime,
        *,
        alert: str = "",
    ) -> None:
        """The attempt(s), the new state and the finished event, one write; a
        dead letter is marked for its alert (`alert: pending`) in the same write."""
        fields: Doc = {"state": state, "lease_until": now, "updated_at": now}
        if next_at is not None:
            fields["next_attempt_at"] = next_at
        if alert:
            fields["alert"] = alert
        update: Doc = {
            "$push": {"attempts": {"$each": [a.model_dump() for a in attempts]}},
            "$inc": {"cycle_attempts": len(attempts)},
            "$set": fields,
            "$unset": {"in_flight": ""},
        }
        await update_with_outbox(self.deliveries, {"_id": delivery_id}, update, outbox)

    async def defer(self, delivery_id: str, until: datetime, now: datetime) -> None:
        """Give a claimed delivery back unsent (its endpoint's breaker holds it)."""
        await self.deliveries.update_one(
            {"_id": delivery_id},
            {
                "$set": {"next_attempt_at": until, "lease_until": now, "updated_at": now},
                "$unset": {"in_flight": ""},
            },
        )

    async def next_alert(self) -> Delivery | None:
        doc = await self.deliveries.find_one(
            {"state": "dead_letter", "alert": "pending"}, WITHOUT_OUTBOX
        )
        return None if doc is None else Delivery.load(doc)

    async def raise_alert(self, source_id: str, alert: Delivery | None, now: datetime) -> None:
        """Queue the alert e-mail (idempotent: its id derives from the dead
        letter's) and mark the dead letter's alert raised; with no contact to
        tell, mark it so."""
        if alert is not None:
            await insert_with_outbox(self.deliveries, alert.doc())
        state = "raised" if alert is not None else "no_contact"
        await self.deliveries.update_one(
            {"_id": source_id, "alert": "pending"}, {"$set": {"alert": state, "updated_at": now}}
        )

    async def health(self) -> Doc:
        """For operations: deliveries by state and audience, open breakers and
        disabled subscriptions, across tenants (ids only)."""
        counts: Doc = {}
        for state in ("pending", "delivered", "dead_letter"):
            counts[state] = await self.deliveries.count_documents({"state": state})
        by_audience: Doc = {}
        for audience in ("partner", "treating_clinician", "patient_portal", "technical_contact"):
            by_audience[audience] = await self.deliveries.count_documents(
                {"state": "dead_letter", "audience": audience}
            )
        fields = {"tenant_id": 1, "breaker": 1, "disabled_reason": 1, "disabled_at": 1}
        open_breakers = await self.subscriptions.find(
            {"breaker.state": {"$in": ["open", "half_open"]}, **LIVE}, fields
        ).to_list(1000)
        disabled = await self.subscriptions.find(
            {"disabled_reason": {"$nin": ["", None]}, **LIVE}, fields
        ).to_list(1000)
        return {
            "deliveries": counts,
            "dead_letters_by_audience": by_audience,
            "open_circuits": open_breakers,
            "disabled_subscriptions": disabled,
        }

    async def resend(self, query: Doc, now: datetime) -> int:
        """Put finished deliveries back in the queue with a fresh retry budget;
        the delivery id (the `webhook-id`) stays, so a partner can de-duplicate."""
        result = await self.deliveries.update_many(
            {"state": {"$in": ["dead_letter", "delivered"]}, **query},
            {
                "$set": {
                    "state": "pending",
                    "next_attempt_at": now,
                    "lease_until": now,
                    "cycle_attempts": 0,
                    "cycle_started": now,
                    "alert": "",
                },
                "$inc": {"resends": 1},
            },
        )
        return result.modified_count

    async def resend_dead_letters(self, tenant_id: str, sub_id: str, now: datetime) -> int:
        await self.subscription(tenant_id, sub_id)  # NotFound unless the tenant's own
        query = {"tenant_id": tenant_id, "subscription_id": sub_id, "state": "dead_letter"}
        return await self.resend(query, now)

    async def resend_sequences(
        self, tenant_id: str, sub_id: str, first: int, last: int, now: datetime
    ) -> int:
        """A partner saw a gap: resend the finished deliveries numbered first..last."""
        await self.subscription(tenant_id, sub_id)
        query = {
            "tenant_id": tenant_id,
            "subscription_id": sub_id,
            "sequence": {"$gte": first, "$lte": last},
        }
        return await self.resend(query, now)

    async def resend_one(self, tenant_id: str, delivery_id: str, now: datetime) -> None:
        if not await self.resend({"_id": delivery_id, "tenant_id": tenant_id}, now):
            await self.delivery(tenant_id, delivery_id)  # NotFound if not the tenant's
            raise Conflict("the delivery is still pending; only finished ones can be resent")

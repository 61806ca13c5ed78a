"""notify's own collections: `subscriptions` (a tenant's destinations: partner
webhooks, the treating clinician's and the patient portal's channels, with
their secrets) and `deliveries` (one per event and subscriber, with every
attempt). Every read and change a tenant makes is scoped by its tenant_id.
Documents go in and out as the typed models of services/notify/models.py;
every time is the caller's `now` (its clock)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection

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
        self, subscriptions: AsyncCollection[Doc], deliveries: AsyncCollection[Doc]
    ) -> None:
        self.subscriptions = subscriptions
        self.deliveries = deliveries

    async def create_indexes(self) -> None:
        await self.subscriptions.create_index([("tenant_id", 1), ("active", 1)])
        await self.deliveries.create_index([("state", 1), ("next_attempt_at", 1)])
        await self.deliveries.create_index([("tenant_id", 1), ("subscription_id", 1)])

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

    # ------------------------------------------------------------ deliveries

    async def create_delivery(self, delivery: Delivery) -> bool:
        """False if it exists already (a redelivered event)."""
        return await insert_with_outbox(self.deliveries, delivery.doc())

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

    async def claim_due(self, lease_seconds: float, now: datetime) -> Delivery | None:
        """Take one due delivery for `lease_seconds`, so two dispatchers never send
        it at once. `in_flight` marks the send as started; the delivery returned
        is the one from before the claim, so a set `in_flight` there means an
        earlier dispatcher died between sending and recording."""
        doc = await claim_one(
            self.deliveries,
            {"state": "pending", "next_attempt_at": {"$lte": now}, "lease_until": {"$lte": now}},
            [("next_attempt_at", 1)],
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
    ) -> None:
        fields: Doc = {"state": state, "lease_until": now, "updated_at": now}
        if next_at is not None:
            fields["next_attempt_at"] = next_at
        update: Doc = {
            "$push": {"attempts": {"$each": [a.model_dump() for a in attempts]}},
            "$inc": {"cycle_attempts": len(attempts)},
            "$set": fields,
            "$unset": {"in_flight": ""},
        }
        await update_with_outbox(self.deliveries, {"_id": delivery_id}, update, outbox)

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
                },
                "$inc": {"resends": 1},
            },
        )
        return result.modified_count

    async def resend_dead_letters(self, tenant_id: str, sub_id: str, now: datetime) -> int:
        await self.subscription(tenant_id, sub_id)  # NotFound unless the tenant's own
        query = {"tenant_id": tenant_id, "subscription_id": sub_id, "state": "dead_letter"}
        return await self.resend(query, now)

    async def resend_one(self, tenant_id: str, delivery_id: str, now: datetime) -> None:
        if not await self.resend({"_id": delivery_id, "tenant_id": tenant_id}, now):
            await self.delivery(tenant_id, delivery_id)  # NotFound if not the tenant's
            raise Conflict("the delivery is still pending; only finished ones can be resent")

"""notify's own collections: `subscriptions` (a tenant's destinations: partner
webhooks, the treating clinician's and the patient portal's channels, with
their secrets) and `deliveries` (one per event and subscriber, with every
attempt). Every read and change a tenant makes is scoped by its tenant_id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shared.envelope import OutboxEntry
from shared.errors import Conflict, NotFound
from shared.store import Doc, claim_one, update_if

# What a tenant may see of a delivery in a listing (the payload is fetched one by one).
LISTING = {"payload": 0, "outbox": 0, "traceparent": 0, "has_outbox": 0, "lease_until": 0}


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

    async def active_subscriptions(self, tenant_id: str, event_type: str) -> list[Doc]:
        query = {"tenant_id": tenant_id, "active": True, "event_types": event_type}
        return await self.subscriptions.find(query).to_list()

    async def subscriptions_of(self, tenant_id: str) -> list[Doc]:
        return await self.subscriptions.find({"tenant_id": tenant_id}).to_list(1000)

    async def subscription(self, tenant_id: str, sub_id: str) -> Doc:
        doc = await self.subscriptions.find_one({"_id": sub_id, "tenant_id": tenant_id})
        if doc is None:
            raise NotFound("no such subscription")
        return doc

    async def update_subscription(self, tenant_id: str, sub_id: str, update: Doc) -> Doc:
        if not await update_if(self.subscriptions, {"_id": sub_id, "tenant_id": tenant_id}, update):
            raise NotFound("no such subscription")
        return await self.subscription(tenant_id, sub_id)

    async def delete_subscription(self, tenant_id: str, sub_id: str) -> None:
        result = await self.subscriptions.delete_one({"_id": sub_id, "tenant_id": tenant_id})
        if not result.deleted_count:
            raise NotFound("no such subscription")

    # ------------------------------------------------------------ deliveries

    async def create_delivery(self, doc: Doc) -> bool:
        try:
            await self.deliveries.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def list_deliveries(self, tenant_id: str, filters: Doc, limit: int) -> list[Doc]:
        query = {"tenant_id": tenant_id, **filters}
        cursor = self.deliveries.find(query, LISTING).sort("created_at", -1).limit(limit)
        return await cursor.to_list()

    async def delivery(self, tenant_id: str, delivery_id: str) -> Doc:
        projection = {"outbox": 0, "traceparent": 0, "has_outbox": 0, "lease_until": 0}
        doc = await self.deliveries.find_one(
            {"_id": delivery_id, "tenant_id": tenant_id}, projection
        )
        if doc is None:
            raise NotFound("no such delivery")
        return doc

    async def claim_due(self, lease_seconds: float) -> Doc | None:
        """Take one due delivery for `lease_seconds`, so two dispatchers never send
        it at once. `in_flight` marks the send as started; the document returned
        is the one from before the claim, so a set `in_flight` there means an
        earlier dispatcher died between sending and recording."""
        now = datetime.now(UTC)
        return await claim_one(
            self.deliveries,
            {"state": "pending", "next_attempt_at": {"$lte": now}, "lease_until": {"$lte": now}},
            [("next_attempt_at", 1)],
            {"$set": {"lease_until": now + timedelta(seconds=lease_seconds), "in_flight": now}},
        )

    async def record_attempt(
        self,
        delivery_id: str,
        attempts: list[Doc],
        state: str,
        next_at: datetime | None,
        outbox: list[OutboxEntry],
    ) -> None:
        update: Doc = {
            "$push": {"attempts": {"$each": attempts}},
            "$inc": {"cycle_attempts": len(attempts)},
            "$set": {
                "state": state,
                "lease_until": datetime.now(UTC),
                "updated_at": datetime.now(UTC),
            },
            "$unset": {"in_flight": ""},
        }
        if next_at is not None:
            update["$set"]["next_attempt_at"] = next_at
        if outbox:
            update["$push"]["outbox"] = {"$each": [e.model_dump() for e in outbox]}
            update["$set"]["has_outbox"] = True
        await self.deliveries.update_one({"_id": delivery_id}, update)

    async def resend(self, query: Doc) -> int:
        """Put finished deliveries back in the queue with a fresh retry budget;
        the delivery id (the `webhook-id`) stays, so a partner can de-duplicate."""
        now = datetime.now(UTC)
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

    async def resend_one(self, tenant_id: str, delivery_id: str) -> None:
        if not await self.resend({"_id": delivery_id, "tenant_id": tenant_id}):
            await self.delivery(tenant_id, delivery_id)  # NotFound if not the tenant's
            raise Conflict("the delivery is still pending; only finished ones can be resent")

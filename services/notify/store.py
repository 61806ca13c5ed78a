"""notify's own collections: `subscriptions` (partner webhooks and their
secrets) and `deliveries` (one per event and subscriber, with every attempt)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shared.envelope import OutboxEntry
from shared.store import Doc


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

    async def active_subscriptions(self, tenant_id: str, event_type: str) -> list[Doc]:
        query = {"tenant_id": tenant_id, "active": True, "event_types": event_type}
        return await self.subscriptions.find(query).to_list()

    async def create_delivery(self, doc: Doc) -> bool:
        try:
            await self.deliveries.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def claim_due(self, lease_seconds: float) -> Doc | None:
        """Take one due delivery for `lease_seconds`, so two dispatchers never send it at once."""
        now = datetime.now(UTC)
        return await self.deliveries.find_one_and_update(
            {"state": "pending", "next_attempt_at": {"$lte": now}, "lease_until": {"$lte": now}},
            {"$set": {"lease_until": now + timedelta(seconds=lease_seconds)}},
            sort=[("next_attempt_at", 1)],
            return_document=ReturnDocument.AFTER,
        )

    async def record_attempt(
        self,
        delivery_id: str,
        attempt: Doc,
        state: str,
        next_at: datetime | None,
        outbox: list[OutboxEntry],
    ) -> None:
        update: Doc = {
            "$push": {"attempts": attempt},
            "$set": {
                "state": state,
                "lease_until": datetime.now(UTC),
                "updated_at": datetime.now(UTC),
            },
        }
        if next_at is not None:
            update["$set"]["next_attempt_at"] = next_at
        if outbox:
            update["$push"]["outbox"] = {"$each": [e.model_dump() for e in outbox]}
            update["$set"]["has_outbox"] = True
        await self.deliveries.update_one({"_id": delivery_id}, update)

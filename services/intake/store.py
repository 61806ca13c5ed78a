"""Intake's own collections: `cases` (the submitted case, its stage and outbox)
and `rejections` (submissions refused, with their field errors)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shared.envelope import OutboxEntry
from shared.store import Doc, apply_once


class IntakeStore:
    def __init__(self, cases: AsyncCollection[Doc], rejections: AsyncCollection[Doc]) -> None:
        self.cases = cases
        self.rejections = rejections

    async def create_indexes(self) -> None:
        await self.cases.create_index([("tenant_id", ASCENDING), ("created_at", ASCENDING)])

    async def get(self, case_id: str) -> Doc | None:
        return await self.cases.find_one({"_id": case_id}, {"applied": 0, "outbox": 0})

    async def insert_case(self, doc: Doc, outbox: list[OutboxEntry]) -> bool:
        """Insert a new case with its first events; False if it already exists."""
        doc = {**doc, "outbox": [e.model_dump() for e in outbox], "has_outbox": bool(outbox)}
        try:
            await self.cases.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def list_for_tenant(self, tenant_id: str, limit: int) -> list[Doc]:
        cursor = self.cases.find(
            {"tenant_id": tenant_id},
            {"submission": 0, "applied": 0, "outbox": 0},
            sort=[("created_at", ASCENDING)],
            limit=limit,
        )
        return await cursor.to_list()

    async def advance_stage(self, case_id: str, event_id: str, stage: str, rank: int) -> None:
        """Record a downstream stage; the stage shown only moves forward."""
        now = datetime.now(UTC)
        await apply_once(
            self.cases,
            case_id,
            event_id,
            {
                "$push": {"history": {"stage": stage, "at": now}},
                "$max": {"stage_rank": rank},
                "$set": {"updated_at": now},
            },
            upsert=False,
        )
        await self.cases.update_one(
            {"_id": case_id, "stage_rank": rank}, {"$set": {"stage": stage}}
        )

    async def record_rejection(
        self, key: str, doc: dict[str, Any], outbox: list[OutboxEntry]
    ) -> bool:
        doc = {"_id": key, **doc, "outbox": [e.model_dump() for e in outbox]}
        doc["has_outbox"] = bool(outbox)
        try:
            await self.rejections.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

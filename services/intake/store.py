"""Intake's own collections: `cases` (the submitted case, its stage, what it waits
for, and its outbox) and `rejections` (submissions refused, with their field
errors but never the submitted values)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shared.envelope import OutboxEntry
from shared.store import Doc, apply_once, update_if

WAITING = ["held_for_review", "awaiting_authorization"]


class IntakeStore:
    def __init__(self, cases: AsyncCollection[Doc], rejections: AsyncCollection[Doc]) -> None:
        self.cases = cases
        self.rejections = rejections

    async def create_indexes(self) -> None:
        await self.cases.create_index([("tenant_id", ASCENDING), ("created_at", ASCENDING)])
        await self.cases.create_index([("tenant_id", ASCENDING), ("external_id", ASCENDING)])
        await self.rejections.create_index([("tenant_id", ASCENDING), ("at", ASCENDING)])

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

    async def known_references(self, tenant_id: str, refs: list[str]) -> dict[str, str]:
        """reference → case id, for the tenant's cases named by case id or external id."""
        if not refs:
            return {}
        # Two indexed queries rather than one `$or`, which SecantusDB runs as a scan
        # of the whole collection.
        found: dict[str, str] = {}
        for field in ("_id", "external_id"):
            cursor = self.cases.find(
                {"tenant_id": tenant_id, field: {"$in": refs}}, {"external_id": 1}
            )
            for d in await cursor.to_list():
                found[d["_id"]] = d["_id"]
                found[d["external_id"]] = d["_id"]
        return {r: found[r] for r in refs if r in found}

    async def list_for_tenant(self, tenant_id: str, limit: int) -> list[Doc]:
        cursor = self.cases.find(
            {"tenant_id": tenant_id},
            {"submission": 0, "applied": 0, "outbox": 0},
            sort=[("created_at", ASCENDING)],
            limit=limit,
        )
        return await cursor.to_list()

    async def record_authorization(self, case_id: str, provider_id: str, entry: Doc) -> Doc | None:
        """Record one provider's release once; the case after it, or None if already on file."""
        recorded = await update_if(
            self.cases,
            {"_id": case_id, "authorized_providers": {"$ne": provider_id}},
            {
                "$addToSet": {"authorized_providers": provider_id},
                "$pull": {"waiting_on_authorization": provider_id},
                "$push": {"authorizations": entry},
                "$set": {"updated_at": datetime.now(UTC)},
            },
        )
        return await self.get(case_id) if recorded else None

    async def release_hold(self, case_id: str, review: Doc, next_stage: str, rank: int) -> bool:
        """Clear the human-review hold once; the case then waits only on authorizations."""
        now = datetime.now(UTC)
        result = await self.cases.update_one(
            {"_id": case_id, "stage": "held_for_review"},
            {
                "$set": {
                    "hold_reason": "",
                    "review": review,
                    "stage": next_stage,
                    "stage_rank": rank,
                    "updated_at": now,
                },
                "$push": {"history": {"stage": next_stage, "at": now}},
            },
        )
        return result.modified_count == 1

    async def _transition(
        self, condition: Doc, stage: str, fields: Doc, outbox: list[OutboxEntry]
    ) -> bool:
        """Move a case matching `condition` to `stage` with its events, in one write;
        False if it no longer matches (someone else moved it first)."""
        now = datetime.now(UTC)
        result = await self.cases.update_one(
            condition,
            {
                "$set": {**fields, "stage": stage, "updated_at": now, "has_outbox": True},
                "$push": {
                    "history": {"stage": stage, "at": now},
                    "outbox": {"$each": [e.model_dump() for e in outbox]},
                },
            },
        )
        return result.modified_count == 1

    async def decline(self, case_id: str, review: Doc, outbox: list[OutboxEntry]) -> bool:
        held = {"_id": case_id, "stage": "held_for_review"}
        return await self._transition(held, "declined", {"review": review}, outbox)

    async def accept_if_ready(self, case_id: str, rank: int, outbox: list[OutboxEntry]) -> bool:
        """Move a waiting case to accepted with its case.accepted event, exactly once:
        the stage condition makes concurrent last authorizations emit one event."""
        ready = {
            "_id": case_id,
            "stage": {"$in": WAITING},
            "hold_reason": "",
            "waiting_on_authorization": {"$size": 0},
        }
        return await self._transition(ready, "accepted", {"stage_rank": rank}, outbox)

    async def advance_stage(
        self, case_id: str, event_id: str, stage: str, rank: int, at: datetime
    ) -> None:
        """Record a downstream stage reached `at`; the stage shown only moves forward.

        One write in the usual case (stages arrive in order); a stage that
        arrives after a later one (report.ready before report.submitted) only
        joins the history, in a second, guarded write."""
        now = datetime.now(UTC)
        entry = {"history": {"stage": stage, "at": at, "recorded_at": now}}
        forward = {"$push": entry, "$set": {"updated_at": now, "stage": stage, "stage_rank": rank}}
        moved = await apply_once(
            self.cases,
            case_id,
            event_id,
            forward,
            upsert=False,
            where={"stage_rank": {"$lt": rank}},
        )
        if not moved:
            late = {"$push": entry, "$set": {"updated_at": now}}
            await apply_once(self.cases, case_id, event_id, late, upsert=False)

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

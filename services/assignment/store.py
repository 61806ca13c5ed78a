"""assignment's own collections: `reviewers` (the roster) and `assignments`
(one document per case, with its outbox)."""

from __future__ import annotations

from pymongo.asynchronous.collection import AsyncCollection

from services.assignment.domain import Reviewer
from shared.store import Doc


class AssignmentStore:
    def __init__(self, reviewers: AsyncCollection[Doc], assignments: AsyncCollection[Doc]) -> None:
        self.reviewers = reviewers
        self.assignments = assignments

    async def create_indexes(self) -> None:
        await self.assignments.create_index([("reviewer_id", 1), ("state", 1)])

    async def upsert_reviewers(self, roster: list[Reviewer]) -> None:
        for r in roster:
            await self.reviewers.replace_one(
                {"_id": r.reviewer_id}, {"_id": r.reviewer_id, **r.model_dump()}, upsert=True
            )

    async def roster(self) -> list[Reviewer]:
        docs = await self.reviewers.find({"active": True}, {"_id": 0}).to_list()
        return [Reviewer.model_validate(d) for d in docs]

    async def active_load(self) -> dict[str, int]:
        pipeline: list[Doc] = [
            {"$match": {"state": "assigned"}},
            {"$group": {"_id": "$reviewer_id", "n": {"$sum": 1}}},
        ]
        cursor = await self.assignments.aggregate(pipeline)
        return {d["_id"]: d["n"] async for d in cursor}

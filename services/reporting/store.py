"""reporting's own collections: `assignments` (who may report on which case,
learnt from case.assigned) and `reports` (signed opinions, with the outbox)."""

from __future__ import annotations

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shared.envelope import OutboxEntry
from shared.store import Doc


class ReportingStore:
    def __init__(self, assignments: AsyncCollection[Doc], reports: AsyncCollection[Doc]) -> None:
        self.assignments = assignments
        self.reports = reports

    async def create_indexes(self) -> None:
        await self.assignments.create_index([("reviewer_id", 1), ("reported", 1)])

    async def assignment(self, case_id: str) -> Doc | None:
        return await self.assignments.find_one({"_id": case_id})

    async def open_assignments(self, reviewer_id: str) -> list[Doc]:
        cursor = self.assignments.find(
            {"reviewer_id": reviewer_id, "reported": False}, {"applied": 0, "traceparent": 0}
        )
        return await cursor.to_list()

    async def insert_report(self, doc: Doc, outbox: list[OutboxEntry]) -> bool:
        doc = {**doc, "outbox": [e.model_dump() for e in outbox], "has_outbox": True}
        try:
            await self.reports.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def report(self, report_id: str) -> Doc | None:
        return await self.reports.find_one({"_id": report_id}, {"outbox": 0, "has_outbox": 0})

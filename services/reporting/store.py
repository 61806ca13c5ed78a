"""reporting's own collections:

- `assignments`: one document per assignment id (learnt from case.assigned;
  withdrawn by case.reassigned), with the reviewer's saved draft;
- `reports`: signed opinions (canonical document + detached signature), with
  the outbox; never updated after insertion except by the relay;
- `addenda`: signed answers to follow-up questions, one document each.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shared.envelope import OutboxEntry
from shared.store import Doc

_HIDDEN = {"applied": 0, "traceparent": 0, "draft": 0}


class ReportingStore:
    def __init__(
        self,
        assignments: AsyncCollection[Doc],
        reports: AsyncCollection[Doc],
        addenda: AsyncCollection[Doc],
    ) -> None:
        self.assignments = assignments
        self.reports = reports
        self.addenda = addenda

    async def create_indexes(self) -> None:
        await self.assignments.create_index([("reviewer_id", 1), ("reported", 1)])
        await self.assignments.create_index([("case_id", 1), ("subspecialty", 1)])
        await self.addenda.create_index([("report_id", 1), ("sequence", 1)])

    async def assignment(self, assignment_id: str) -> Doc | None:
        return await self.assignments.find_one({"_id": assignment_id})

    async def latest_assignment_id(self, case_id: str, subspecialty: str) -> str | None:
        """The assignment the newest case.assigned for this case and subspecialty made."""
        doc = await self.assignments.find_one(
            {"case_id": case_id, "subspecialty": subspecialty, "received_at": {"$exists": True}},
            {"_id": 1},
            sort=[("received_at", -1)],
        )
        return doc["_id"] if doc else None

    async def open_assignments(self, reviewer_id: str, case_id: str | None = None) -> list[Doc]:
        query: Doc = {"reviewer_id": reviewer_id, "reported": False}
        if case_id:
            query["case_id"] = case_id
        # Withdrawn ones are dropped here, not in the query: a third condition makes
        # SecantusDB scan the whole collection instead of the (reviewer_id, reported)
        # index, and a reviewer's unreported assignments are few (their capacity).
        docs = await self.assignments.find(query, _HIDDEN).to_list()
        return [d for d in docs if not d.get("withdrawn")]

    async def save_draft(self, assignment_id: str, draft: dict[str, Any]) -> None:
        await self.assignments.update_one({"_id": assignment_id}, {"$set": {"draft": draft}})

    async def mark_reported(self, assignment_id: str, report_id: str) -> None:
        await self.assignments.update_one(
            {"_id": assignment_id}, {"$set": {"reported": True, "report_id": report_id}}
        )

    async def insert(self, coll: AsyncCollection[Doc], doc: Doc, outbox: list[OutboxEntry]) -> bool:
        """Insert a signed document and its events in one write; False if it exists."""
        doc = {**doc, "outbox": [e.model_dump() for e in outbox], "has_outbox": bool(outbox)}
        try:
            await coll.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def report(self, report_id: str) -> Doc | None:
        return await self.reports.find_one({"_id": report_id}, {"outbox": 0, "has_outbox": 0})

    async def report_addenda(self, report_id: str) -> list[Doc]:
        cursor = self.addenda.find({"report_id": report_id}, {"outbox": 0, "has_outbox": 0})
        return await cursor.sort("sequence", 1).to_list()

"""The operations view's collection `ops_cases` (owned by assignment): one
document per case, the `OpsCase` of services/assignment/operations.py, with its
version and the ids of the events it applied (bounded), so a redelivered event
is applied once and two consumers cannot overwrite each other's change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from services.assignment.operations import APPLIED_MAX, CLOSED_STAGES, OpsCase, apply
from shared.errors import RetryableError
from shared.store import Doc

SAVE_ATTEMPTS = 5
# How many cases one read of the view returns at most (the open work is bounded
# by intake's intake rate and the reviewers' capacity; the rest is a filter away).
READ_LIMIT = 5000


class OpsStore:
    def __init__(self, cases: AsyncCollection[Doc]) -> None:
        self.cases = cases

    async def create_indexes(self) -> None:
        await self.cases.create_index("open")
        await self.cases.create_index("external_id")
        await self.cases.create_index("updated_at")

    async def record(self, event: Any, event_id: str, at: datetime, trace_id: str) -> bool:
        """Fold `event` into its case once; False if it was applied already."""
        for _ in range(SAVE_ATTEMPTS):
            doc = await self.cases.find_one({"_id": event.case_id})
            if doc and event_id in doc.get("applied", []):
                return False
            current = OpsCase.model_validate(doc) if doc else None
            updated = apply(current, event, at, trace_id)
            body: Doc = {
                **updated.model_dump(mode="python"),
                "open": updated.stage not in CLOSED_STAGES or bool(updated.delivery_failed),
                "applied": [*(doc or {}).get("applied", []), event_id][-APPLIED_MAX:],
            }
            if doc is None:
                try:
                    await self.cases.insert_one({"_id": event.case_id, **body, "version": 1})
                    return True
                except DuplicateKeyError:
                    continue  # another consumer created it first: read it again
            version = doc["version"]
            result = await self.cases.update_one(
                {"_id": event.case_id, "version": version},
                {"$set": {**body, "version": version + 1}},
            )
            if result.modified_count == 1:
                return True
        raise RetryableError(f"ops case {event.case_id} kept changing; try again")

    async def get(self, case_id: str) -> OpsCase | None:
        doc = await self.cases.find_one({"_id": case_id})
        return OpsCase.model_validate(doc) if doc else None

    async def open_cases(self) -> list[OpsCase]:
        docs = await self.cases.find({"open": True}).to_list(READ_LIMIT)
        return [OpsCase.model_validate(d) for d in docs]

    async def since(self, since: datetime) -> list[OpsCase]:
        """Cases that changed since `since` (the trends window), without timelines."""
        docs = await self.cases.find(
            {"updated_at": {"$gte": since}}, {"timeline": 0, "applied": 0}
        ).to_list(READ_LIMIT)
        return [OpsCase.model_validate(d) for d in docs]

"""Fakes for in-process unit tests of the HTTP layer (the real database is used
by the integration tier for the same code paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class MemoryAuditCollection:
    """What shared.audit.AuditTrail writes: records inserted, then their outcome set."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def insert_one(self, doc: dict[str, Any]) -> None:
        assert doc["_id"] not in self.records, "an audit record is written once"
        self.records[doc["_id"]] = doc

    async def update_one(self, query: dict[str, Any], update: dict[str, Any]) -> None:
        doc = self.records.get(query["_id"])
        if doc is not None and "outcome" not in doc["resource"]:
            doc["resource"]["outcome"] = update["$set"]["resource.outcome"]
            doc["status"] = update["$set"]["status"]
